"""Schemathesis against the app's own /openapi.json: no 5xx, and every answer matches the schema.

Bounded so the suite stays fast (a few examples per operation) and reproducible
(Hypothesis derandomized: the same examples on every run, no example database).
A failure prints the request to replay. Against real Redis and SQL, as a
tenant with an admin key, on both databases.

One test per operation, driven through Hypothesis directly: schemathesis's own
pytest loader (`from_fixture`) reads a private pytest attribute that pytest 9
no longer has.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.conftest import Backend, Tenant, configure, make_tenant

# Per operation; CONVEYOR_FUZZ_EXAMPLES=500 for a deeper run by hand (still derandomized).
EXAMPLES = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def _operations() -> list[tuple[str, str]]:
    from api.app import create_app

    paths = create_app().openapi()["paths"]
    return [(method.upper(), path) for path, methods in paths.items() for method in methods]


@pytest.fixture(scope="module")
def fuzzed(backend: Backend) -> Iterator[tuple[Any, Tenant]]:
    """One app, its schema and one admin tenant per backend (loading the schema is the slow part).

    Afterwards every job the fuzzing left waiting or running is canceled: they would otherwise
    keep the shared worker busy (generated payloads ask for long tasks) for the tests after it.
    """
    from api.app import create_app

    configure(backend.env())
    tenant = make_tenant()
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app()), tenant
    _cancel_all(tenant.name)


def _cancel_all(tenant: str) -> None:
    from sqlmodel import col, select

    from jobs.actions.control import cancel_job
    from jobs.history.db import session_scope
    from jobs.history.models import Job
    from jobs.state.redis_conn import get_redis
    from jobs.status import TERMINAL

    ended = [s.value for s in TERMINAL]
    with session_scope() as session:
        query = select(Job.job_id).where(Job.tenant == tenant, col(Job.status).not_in(ended))
        job_ids = list(session.exec(query).all())
    for job_id in job_ids:
        with (
            contextlib.suppress(Exception),
            session_scope() as session,
        ):  # one that ended meanwhile is refused
            cancel_job(session=session, client=get_redis(), job_id=job_id, tenant=tenant, by="test teardown")


@pytest.mark.parametrize(("method", "path"), _operations(), ids=lambda value: value)
def test_the_api_answers_generated_requests_without_a_5xx(
    env: Backend, fuzzed: tuple[Any, Tenant], method: str, path: str
) -> None:
    schema, tenant = fuzzed
    operation = schema[path][method]

    # Valid requests and invalid ones (wrong types, missing fields, out of range), half and half.
    cases = operation.as_strategy() | operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def answer(case: Any) -> None:
        case.call_and_validate(headers=tenant.headers, checks=CHECKS)

    answer()
