"""Roles mean one thing on every channel (issue 11).

member and admin reach their own tenant's jobs only; operator reaches every tenant's. Each
caller below is checked on every channel that serves a job by id: GET, list, record, result,
events, SSE, long poll, WebSocket, pages, control, and the seed-compat routes.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from jobs.status import JobStatus
from tests.conftest import make_tenant, seed_job
from tests.web_support import sign_in

CALLERS = [
    ("member", True),
    ("admin", True),
    ("member", False),
    ("admin", False),
    ("operator", False),
]


def _finished_job(tenant: str) -> str:
    """A job of ``tenant`` that has finished with a result (so streams end and control is a 409)."""
    from jobs.history.db import session_scope
    from jobs.state.lifecycle import record, write_through

    job_id = seed_job(tenant=tenant)
    for status, patch in ((JobStatus.STARTED, {}), (JobStatus.FINISHED, {"result": {"sum": 3}})):
        result = record(job_id, status, event=status.value, patch=patch)
        assert result.applied
        with session_scope() as session:
            write_through(result, session=session, event=status.value)
    return job_id


def _ws_reaches(client: TestClient, path: str) -> bool:
    try:
        with client.websocket_connect(path) as ws:
            ws.receive_text()
            return True
    except WebSocketDisconnect as closed:
        assert closed.code == 4404, closed.code
        return False


@pytest.mark.parametrize(
    ("role", "same_tenant"), CALLERS, ids=[f"{r}-{'own' if s else 'other'}" for r, s in CALLERS]
)
def test_a_role_reaches_the_same_jobs_on_every_channel(app: Any, env: Any, role: str, same_tenant: bool):
    owner_tenant = f"t-{uuid.uuid4().hex[:10]}"
    job_id = _finished_job(owner_tenant)
    caller = make_tenant(role, name=owner_tenant if same_tenant else None)
    reaches = same_tenant or role == "operator"
    found = 200 if reaches else 404
    headers = caller.headers
    token = f"access_token={caller.key}"
    seed002 = f"/api/v1/jobs/status/{job_id}"
    with TestClient(app) as client:
        codes = {
            "GET": client.get(f"/api/v1/jobs/{job_id}", headers=headers).status_code,
            "record": client.get(f"/api/v1/jobs/{job_id}/record", headers=headers).status_code,
            "result": client.get(f"/api/v1/jobs/{job_id}/result", headers=headers).status_code,
            "events": client.get(f"/api/v1/jobs/{job_id}/events", headers=headers).status_code,
            "poll": client.get(f"/api/v1/jobs/{job_id}/poll?since=0", headers=headers).status_code,
            "SSE": client.get(f"/api/v1/jobs/{job_id}/stream?{token}").status_code,
            "compat job-status": client.get(f"/job-status/{job_id}", headers=headers).status_code,
            "compat v1 status": client.get(f"/api/v1/jobs/status/{job_id}", headers=headers).status_code,
            "compat poll": client.get(f"{seed002}/poll?timeout=1", headers=headers).status_code,
            "compat SSE": client.get(f"{seed002}/stream?{token}").status_code,
        }
        expected = dict.fromkeys(codes, found)
        # Control of a finished job: 409 (reached, but it has ended) or 404 (not reached).
        codes["cancel"] = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=headers).status_code
        codes["compat cancel"] = client.post(f"/api/v1/jobs/cancel/{job_id}", headers=headers).status_code
        expected["cancel"] = expected["compat cancel"] = 409 if reaches else 404
        listed = client.get("/api/v1/jobs", params={"tenant": owner_tenant}, headers=headers)
        codes["list"] = listed.status_code
        expected["list"] = 200 if reaches else 403
        if reaches:
            assert job_id in {j["job_id"] for j in listed.json()["items"]}
        assert codes == expected
        seed_status = client.get(f"/status/{job_id}", headers=headers).json()["status"]
        assert (seed_status != "unknown") is reaches, seed_status  # seeds 000/001: unknown, not 404

        assert _ws_reaches(client, f"/api/v1/jobs/{job_id}/ws?{token}") is reaches
        assert _ws_reaches(client, f"/ws/{job_id}?{token}") is reaches

        sign_in(client, caller.key)
        page = client.get(f"/jobs/{job_id}")
        assert page.status_code == found, page.text[:300]
        control = client.post(f"/jobs/{job_id}/cancel", headers={"HX-Request": "true"})
        assert (control.status_code != 404) is reaches or control.status_code == 403


def test_json_with_job_data_is_never_cached_or_sniffed(app: Any, env: Any):
    tenant = make_tenant("member")
    job_id = _finished_job(tenant.name)
    with TestClient(app) as client:
        for path in (
            f"/api/v1/jobs/{job_id}",
            f"/api/v1/jobs/{job_id}/result",
            "/api/v1/jobs",
            f"/api/v1/jobs/{job_id}/record",
            f"/api/v1/jobs/{job_id}/events",
            f"/job-status/{job_id}",
        ):
            response = client.get(path, headers=tenant.headers)
            assert response.status_code == 200, path
            assert response.headers["x-content-type-options"] == "nosniff", path
            assert response.headers["cache-control"] == "no-store", path
