"""Operators see every tenant (the `tenant` filter); members and admins see only their own."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import make_tenant


def test_listing_and_reads_across_tenants(app: Any, env: Any):
    admin, member, other = make_tenant("operator"), make_tenant("member"), make_tenant("member")
    body = {"task": "long_task", "payload": {"n": 1}, "queue": "other"}
    with TestClient(app) as client:
        mine = client.post("/api/v1/jobs", json=body, headers=member.headers).json()["job_id"]
        theirs = client.post("/api/v1/jobs", json=body, headers=other.headers).json()["job_id"]

        def ids(headers: dict[str, str], **params: Any) -> set[str]:
            response = client.get("/api/v1/jobs", params={"limit": 200, **params}, headers=headers)
            assert response.status_code == 200, response.text
            return {j["job_id"] for j in response.json()["items"]}

        assert ids(member.headers) == {mine}
        assert ids(member.headers, tenant=member.name) == {mine}
        for tenant in (other.name, "*"):
            denied = client.get("/api/v1/jobs", params={"tenant": tenant}, headers=member.headers)
            assert denied.status_code == 403 and "own tenant" in denied.json()["detail"]

        assert ids(admin.headers) == set()  # an operator's default is its own tenant
        assert ids(admin.headers, tenant=member.name) == {mine}
        assert {mine, theirs} <= ids(admin.headers, tenant="*")
        assert ids(admin.headers, tenant="*", owner=member.key_id) == {mine}

        # By id, an operator reads any tenant's job; a member only its own.
        for path in ("", "/events", "/record"):
            assert client.get(f"/api/v1/jobs/{mine}{path}", headers=admin.headers).status_code == 200
            assert client.get(f"/api/v1/jobs/{mine}{path}", headers=other.headers).status_code == 404
        record = client.get(f"/api/v1/jobs/{mine}/record", headers=admin.headers).json()
        assert record["tenant"] == member.name and record["owner"] == member.key_id
