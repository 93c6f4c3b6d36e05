"""The job domain decides with the collaborators it is handed: no server, no process globals."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from sqlmodel import Session

from jobs import lazy
from jobs.actions.control import cancel_job, pause_job
from jobs.actions.submit import submit_job
from jobs.errors import IllegalTransition
from jobs.history.db import make_engine
from jobs.history.models import Job
from jobs.queues.queueing import get_queue
from jobs.settings import get_settings
from jobs.state.redis_conn import get_redis
from tests.conftest import Backend

TENANT = "t-domain-calls"


@pytest.fixture
def own_stores(env: Backend) -> Iterator[tuple[Session, Redis]]:
    """A session on an engine of its own and a Redis client of its own, not the process's."""
    settings = get_settings()
    engine = make_engine(settings.sqlalchemy_url)
    client = Redis.from_url(settings.redis_url)
    assert client is not get_redis()
    with Session(engine, expire_on_commit=False) as session:
        yield session, client
    client.close()
    engine.dispose()


def test_submit_then_steer_a_job_with_the_session_and_client_passed_in(own_stores: tuple[Session, Redis]):
    session, client = own_stores
    submitted = submit_job(
        session=session,
        client=client,
        tenant=TENANT,
        owner=None,
        task="long_task",
        payload={"n": 1},
        queue="other",
    )
    assert submitted.created and json.loads(submitted.doc)["status"] == "queued"
    assert submitted.job_id in get_queue("other", client).get_job_ids()

    with pytest.raises(IllegalTransition) as refused:  # only a running job can be paused
        pause_job(session=session, client=client, job_id=submitted.job_id, tenant=TENANT, by="test")
    assert refused.value.extra["allowed_actions"] == ["cancel"]

    outcome = cancel_job(session=session, client=client, job_id=submitted.job_id, tenant=TENANT, by="test")
    assert outcome.done and json.loads(outcome.doc)["status"] == "canceled"
    assert submitted.job_id not in get_queue("other", client).get_job_ids()

    # The domain committed its own writes: another session sees them with nothing left to flush.
    with Session(session.get_bind()) as other:
        row = other.get(Job, submitted.job_id)
        assert row is not None and row.status == "canceled"


def _type_checking_names(path: Path) -> dict[str, str]:
    """The names `jobs.lazy` imports for mypy, and the module each comes from."""
    tree = ast.parse(path.read_text())
    (block,) = [node for node in tree.body if isinstance(node, ast.If)]
    return {
        alias.asname or alias.name: node.module or ""
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_the_lazy_seam_resolves_each_name_to_its_home_module():
    import importlib

    assert _type_checking_names(Path(lazy.__file__)) == lazy.HOMES
    for name, home in lazy.HOMES.items():
        assert getattr(lazy, name) is getattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError):
        _ = lazy.no_such_name  # type: ignore[attr-defined]
