"""Bulk actions by filter, over HTTP, the CLI and the analytics page, on real queues and a real worker."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import Tenant, make_tenant
from tests.services import wait_until
from tests.test_jobs_e2e import sql_row, submit, wait_sql_status


def bulk(api: TestClient, action: str, spec: dict[str, Any], **extra: Any) -> Any:
    return api.post(f"/api/v1/jobs/bulk/{action}", json={"filter": spec, **extra})


def test_cancel_by_tag_counts_first_then_cancels_only_the_matching(api: TestClient, tenant: Tenant) -> None:
    tagged = [submit(api, "long_task", {"n": 1}, delay=3600, tags=["bulk-x"])["job_id"] for _ in range(3)]
    other = submit(api, "long_task", {"n": 1}, delay=3600, tags=["keep"])["job_id"]

    counted = bulk(api, "cancel", {"tag": "bulk-x"})
    assert counted.status_code == 200, counted.text
    answer = counted.json()
    assert (answer["action"], answer["dry_run"], answer["matched"], answer["done"]) == ("cancel", True, 3, 0)
    assert answer["job_ids"] == [] and answer["skipped"] == 0
    assert all(sql_row(job_id).status == "scheduled" for job_id in tagged)  # type: ignore[union-attr]

    done = bulk(api, "cancel", {"tag": "bulk-x"}, dry_run=False, reason="cleanup").json()
    assert (done["matched"], done["done"], done["skipped"]) == (3, 3, 0)
    assert sorted(done["job_ids"]) == sorted(tagged)
    for job_id in tagged:
        assert api.get(f"/api/v1/jobs/{job_id}").json()["status"] == "canceled"
    assert api.get(f"/api/v1/jobs/{other}").json()["status"] == "scheduled"
    assert bulk(api, "cancel", {"tag": "bulk-x"}).json()["matched"] == 0  # nothing left to cancel

    outsider = make_tenant("operator")
    with TestClient(api.app, headers=outsider.headers) as client:  # tenant-scoped: its own by default
        assert bulk(client, "cancel", {"tag": "keep"}).json()["matched"] == 0
        assert bulk(client, "cancel", {"tag": "keep"}, tenant="*").json()["matched"] >= 1


def test_delete_ended_jobs_by_status_and_time_needs_an_admin(app: Any, tenant: Tenant) -> None:
    with TestClient(app, headers=tenant.headers) as api:
        ids = [submit(api, "long_task", {"n": 1}, delay=3600, tags=["doomed"])["job_id"] for _ in range(2)]
        # Restarted below, it is live again (queued, or running for minutes if a worker takes it).
        waiting = submit(api, "long_task", {"n": 1000, "delay": 1}, delay=3600, tags=["doomed"])["job_id"]
        bulk(api, "cancel", {"tag": "doomed", "status": ["scheduled"]}, dry_run=False)
        restarted = api.post(f"/api/v1/jobs/{waiting}/restart")
        assert restarted.status_code == 200, restarted.text  # live again: delete must leave it
        member = make_tenant("member", name=tenant.name)
        with TestClient(app, headers=member.headers) as client:
            refused = bulk(client, "delete", {"tag": "doomed"})
            assert refused.status_code == 403 and "admin" in refused.json()["detail"]
        spec = {"tag": "doomed", "created_after": "2020-01-01T00:00:00Z"}
        assert bulk(api, "delete", spec).json()["matched"] == 2
        done = bulk(api, "delete", spec, dry_run=False).json()
        assert done["done"] == 2 and sorted(done["job_ids"]) == sorted(ids)
        for job_id in ids:
            assert api.get(f"/api/v1/jobs/{job_id}").status_code == 404 and sql_row(job_id) is None
        assert sql_row(waiting) is not None


def test_restart_every_job_that_failed_with_one_error_from_the_analytics_page(
    app: Any, tenant: Tenant, worker: Any
) -> None:
    from tests.web_support import csrf_from, sign_in

    with TestClient(app, headers=tenant.headers) as api:
        failed = [
            submit(api, "always_fails", {"message": "disk full on /dev/sda1"})["job_id"] for _ in range(2)
        ]
        elsewhere = submit(api, "always_fails", {"message": "a different error"})["job_id"]
        for job_id in [*failed, elsewhere]:
            wait_sql_status(job_id, "failed", timeout=30)
        signature = sql_row(failed[0]).error_signature  # type: ignore[union-attr]
        assert signature and signature != sql_row(elsewhere).error_signature  # type: ignore[union-attr]
        counted = bulk(api, "restart", {"error_signature": signature}).json()
        assert counted["matched"] == 2
        assert bulk(api, "restart", {"error_signature": signature, "status": ["finished"]}).status_code == 422
    with TestClient(app) as client:
        sign_in(client, tenant.key)
        page = client.get("/analytics?days=1")
        assert "Retry all 2 jobs that failed with this error" in page.text
        form = {
            "csrf_token": csrf_from(page.text),
            "signature": signature,
            "days": "1",
            "queue": "",
            "task": "",
        }
        answer = client.post("/analytics/retry", data=form, follow_redirects=False)
        assert answer.status_code == 303 and "retried=2" in answer.headers["location"]
        shown = client.get(answer.headers["location"])
        assert re.search(r"Restarted 2 jobs", shown.text)
        assert client.post("/analytics/retry", data={**form, "csrf_token": "x"}).status_code == 403
    for job_id in failed:
        wait_until(lambda job_id=job_id: (sql_row(job_id).attempt or 0) >= 2, message="a second attempt")  # type: ignore[union-attr,misc]
    assert sql_row(elsewhere).attempt == 1  # type: ignore[union-attr]


def test_cancel_by_batch_counts_that_batch_only(api: TestClient) -> None:
    jobs = [{"task": "long_task", "payload": {"n": 1}, "delay": 3600} for _ in range(2)]
    created = api.post("/api/v1/batches", json={"jobs": jobs})
    assert created.status_code == 201, created.text
    submit(api, "long_task", {"n": 1}, delay=3600)  # not in the batch
    counted = bulk(api, "cancel", {"batch_id": created.json()["batch_id"]})
    assert counted.status_code == 200, counted.text
    assert counted.json()["matched"] == 2
    done = bulk(api, "cancel", {"batch_id": created.json()["batch_id"]}, dry_run=False).json()
    assert (done["matched"], done["done"]) == (2, 2)


def test_bad_bulk_requests_are_4xx_with_a_reason(api: TestClient) -> None:
    assert bulk(api, "explode", {}).status_code == 422
    nope = bulk(api, "cancel", {"status": ["finished"]})
    assert nope.status_code == 422 and "applies to" in nope.json()["detail"]
    naive = bulk(api, "delete", {"ended_after": "2026-01-01T00:00:00"})
    assert naive.status_code == 422
    assert bulk(api, "cancel", {}, limit=0).status_code == 422


def test_the_cli_counts_unless_told_yes(env: Any, app: Any, live_server: Any, tenant: Tenant) -> None:
    from tests.test_cli import conveyor

    with TestClient(app, headers=tenant.headers) as api:
        job_id = submit(api, "long_task", {"n": 1}, delay=3600, tags=["cli-bulk"])["job_id"]
    common = ["--url", live_server.url, "--key", tenant.key]
    counted = conveyor("bulk", "cancel", "--tag", "cli-bulk", *common, env=env.env())
    assert counted.returncode == 0, counted.stderr
    assert "1 jobs would be canceled" in counted.stdout
    assert sql_row(job_id).status == "scheduled"  # type: ignore[union-attr]
    done = conveyor("bulk", "cancel", "--tag", "cli-bulk", "--yes", *common, env=env.env())
    assert done.returncode == 0 and "1 done" in done.stdout, done.stdout + done.stderr
    assert sql_row(job_id).status == "canceled"  # type: ignore[union-attr]
    refused = conveyor("bulk", "delete", "--status", "queued", *common, env=env.env())
    assert refused.returncode != 0 and "applies to" in refused.stderr
