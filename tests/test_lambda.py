"""The Mangum handler serves the same app behind every AWS front door, against real Redis and SQL."""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import Backend, Tenant
from tests.lambda_events import FRONT_DOORS, make_event, response_body, response_headers

CONTEXT = SimpleNamespace(function_name="conveyor-api", aws_request_id="req-1", memory_limit_in_mb=1024)


@pytest.fixture
def handler(env: Backend) -> Any:
    return importlib.import_module("api.lambda_handler").handler


def call(
    handler: Any, door: str, method: str, path: str, tenant: Tenant | None = None, **kw: Any
) -> dict[str, Any]:
    headers = dict(kw.pop("headers", {}))
    if tenant is not None:
        headers["authorization"] = f"Bearer {tenant.key}"
    return handler(make_event(door, method, path, headers=headers, **kw), CONTEXT)


@pytest.mark.parametrize("door", FRONT_DOORS)
def test_submit_then_read_the_status(handler: Any, tenant: Tenant, door: str):
    body = json.dumps({"task": "long_task", "payload": {"n": 3}})
    created = call(
        handler, door, "POST", "/api/v1/jobs", tenant, body=body, headers={"content-type": "application/json"}
    )
    assert created["statusCode"] == 201, created
    job_id = json.loads(response_body(created))["job_id"]

    status = call(handler, door, "GET", f"/api/v1/jobs/{job_id}", tenant)
    assert status["statusCode"] == 200
    snap = json.loads(response_body(status))
    assert snap["job_id"] == job_id and snap["status"] in {"queued", "started", "finished"}
    headers = response_headers(status)
    assert headers["content-type"] == "application/json"
    assert headers["etag"] == f'"{snap["seq"]}"'


@pytest.mark.parametrize("door", FRONT_DOORS)
def test_a_base64_encoded_body_is_decoded(handler: Any, tenant: Tenant, door: str):
    body = json.dumps({"task": "heavy_compute", "payload": {"text": "naïve ✓"}}).encode()
    created = call(
        handler,
        door,
        "POST",
        "/api/v1/jobs",
        tenant,
        body=body,
        b64=True,
        headers={"content-type": "application/json"},
    )
    assert created["statusCode"] == 201, response_body(created)


@pytest.mark.parametrize("door", FRONT_DOORS)
def test_query_strings_reach_the_app(handler: Any, tenant: Tenant, door: str):
    for _ in range(3):
        call(
            handler,
            door,
            "POST",
            "/api/v1/jobs",
            tenant,
            body=json.dumps({"task": "long_task", "queue": "other"}),
            headers={"content-type": "application/json"},
        )
    page = call(handler, door, "GET", "/api/v1/jobs", tenant, query="status=queued&limit=2&queue=other")
    assert page["statusCode"] == 200
    data = json.loads(response_body(page))
    assert len(data["items"]) == 2 and data["next_cursor"]
    rest = call(
        handler,
        door,
        "GET",
        "/api/v1/jobs",
        tenant,
        query=f"status=queued&limit=2&queue=other&cursor={data['next_cursor']}",
    )
    assert len(json.loads(response_body(rest))["items"]) == 1


@pytest.mark.parametrize("door", FRONT_DOORS)
def test_client_errors_keep_their_status_and_message(handler: Any, tenant: Tenant, door: str):
    missing = call(handler, door, "GET", "/api/v1/jobs/3f0e2a8e-0000-4000-8000-000000000000", tenant)
    assert missing["statusCode"] == 404
    assert "No job" in json.loads(response_body(missing))["detail"]
    unauthorized = call(handler, door, "GET", "/api/v1/jobs")
    assert unauthorized["statusCode"] == 401
    assert response_headers(unauthorized)["www-authenticate"] == "Bearer"
    invalid = call(
        handler,
        door,
        "POST",
        "/api/v1/jobs",
        tenant,
        body='{"task": "long_task", "payload": {"n": "x"}}',
        headers={"content-type": "application/json"},
    )
    assert invalid["statusCode"] == 422


def test_the_handler_serves_health_without_any_dependency(handler: Any):
    response = call(handler, "http_api", "GET", "/healthz")
    assert response["statusCode"] == 200
    assert json.loads(response_body(response)) == {"status": "ok"}
