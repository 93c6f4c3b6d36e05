"""Live progress through the Lambda handler (Mangum): long poll answers within API Gateway's limit,
and SSE degrades to one batch per response (EventSource reconnects with Last-Event-ID)."""

from __future__ import annotations

import importlib
import json
import threading
import time
from types import SimpleNamespace
from typing import Any

from jobs.state.lifecycle import record
from jobs.status import JobStatus
from tests.conftest import Backend, Tenant, seed_job
from tests.lambda_events import make_event

S = JobStatus
CONTEXT = SimpleNamespace(function_name="conveyor-api", aws_request_id="req-live")


def invoke(path: str, key: str, query: str = "", headers: dict[str, str] | None = None) -> dict[str, Any]:
    handler = importlib.import_module("api.lambda_handler").handler
    event = make_event(
        "http_api", "GET", path, query=query, headers={"authorization": f"Bearer {key}", **(headers or {})}
    )
    return dict(handler(event, CONTEXT))


def sse_events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]


def test_long_poll_through_lambda(env: Backend, tenant: Tenant):
    job_id = seed_job(tenant.name)
    record(job_id, S.STARTED, event="started")
    asked = time.monotonic()
    behind = invoke(f"/api/v1/jobs/{job_id}/poll", tenant.key, "since=1&timeout=300")
    assert behind["statusCode"] == 200 and json.loads(behind["body"])["seq"] == 2
    assert time.monotonic() - asked < 2

    asked = time.monotonic()
    quiet = invoke(f"/api/v1/jobs/{job_id}/poll", tenant.key, "since=2&timeout=1")
    assert quiet["statusCode"] == 200 and 0.9 < time.monotonic() - asked < 5


def test_sse_through_lambda_sends_one_batch_per_response(env: Backend, tenant: Tenant):
    job_id = seed_job(tenant.name)
    record(job_id, S.STARTED, event="started")
    path = f"/api/v1/jobs/{job_id}/stream"

    first = invoke(path, tenant.key)
    assert first["statusCode"] == 200
    assert first["headers"]["content-type"].startswith("text/event-stream")
    assert [e["seq"] for e in sse_events(first["body"])] == [2]
    assert "retry:" in first["body"]

    # The EventSource reconnects with Last-Event-ID: 2; the response ends with the next change.
    timer = threading.Timer(
        0.5, lambda: record(job_id, S.STARTED, event="progress", patch={"progress": 50.0})
    )
    timer.start()
    asked = time.monotonic()
    second = invoke(path, tenant.key, headers={"last-event-id": "2"})
    timer.join()
    assert [(e["seq"], e["progress"]) for e in sse_events(second["body"])] == [(3, 50.0)]
    assert time.monotonic() - asked < 5

    record(job_id, S.FINISHED, event="finished")
    last = invoke(path, tenant.key, headers={"last-event-id": "3"})
    assert [e["status"] for e in sse_events(last["body"])] == ["finished"]
    assert invoke(path, tenant.key, headers={"last-event-id": "4"})["statusCode"] == 204
