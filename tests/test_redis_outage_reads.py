"""While Redis is down, the reads SQL can answer are answered from SQL, marked as such; writes are 503s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from jobs.embedded import EmbeddedRedis
from tests.conftest import Backend, Tenant, configure


def test_reads_of_jobs_sql_knows_answer_from_sql_with_a_header_while_redis_is_down(
    env: Backend, tmp_path: Path, tenant: Tenant, app: Any
):
    server = EmbeddedRedis(tmp_path / "redis", persist=False)
    url = server.start()
    configure(Backend(env.name, env.database_url, url).env())
    try:
        with TestClient(app, headers=tenant.headers) as client:
            created = client.post("/api/v1/jobs", json={"task": "long_task", "payload": {"n": 1}})
            assert created.status_code == 201
            job_id = created.json()["job_id"]
            up = client.get(f"/api/v1/jobs/{job_id}")
            assert up.status_code == 200 and "x-conveyor-live" not in up.headers
            server.stop()

            for path in (
                f"/api/v1/jobs/{job_id}",
                "/api/v1/jobs",
                f"/api/v1/jobs/{job_id}/record",
                f"/api/v1/jobs/{job_id}/events",
            ):
                response = client.get(path)
                assert response.status_code == 200, (path, response.text)
                assert job_id in response.text, path
            snapshot = client.get(f"/api/v1/jobs/{job_id}")
            assert snapshot.headers["x-conveyor-live"] == "unavailable"
            assert snapshot.json()["status"] == "queued"
            assert client.get("/api/v1/jobs").headers["x-conveyor-live"] == "unavailable"

            result = client.get(f"/api/v1/jobs/{job_id}/result")
            assert result.status_code == 409, result.text  # SQL knows it has not finished: not a 503
            assert result.headers["x-conveyor-live"] == "unavailable"

            write = client.post(f"/api/v1/jobs/{job_id}/cancel")
            assert write.status_code == 503 and "Redis is unavailable" in write.json()["detail"]
            submitted = client.post("/api/v1/jobs", json={"task": "long_task", "payload": {"n": 1}})
            assert submitted.status_code == 503
    finally:
        server.stop()
        configure(env.env())
