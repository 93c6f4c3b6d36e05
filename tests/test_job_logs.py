"""Job logs (issue 14): what a task logs lands in its own job's log, capped and redacted, served
in pages and as a stream, kept in SQL after Redis forgot the job, and pruned with the job.

A real `conveyor worker --concurrency 2` on the `logs` queue, real Redis and SQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from jobs.history.db import session_scope
from jobs.history.models import Job, JobLogLine
from jobs.state.job_logs import DIRTY, lines_key, meta_key
from jobs.state.live import job_key
from jobs.state.redis_conn import get_redis
from tests.conftest import FAST_ENV, Backend, ServerProcess, Tenant, WorkerProcess, seed_job
from tests.live_support import collect_stream, run_async
from tests.log_tasks import SECRET
from tests.services import wait_until
from tests.test_jobs_e2e import submit, wait_status

QUEUE = "logs"
MAX_LINES = 3000
MAX_LINE = 500


@pytest.fixture(scope="module")
def log_worker(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    name = f"logs-{uuid.uuid4().hex[:6]}"
    proc = WorkerProcess(
        backend,
        tmp_path_factory.mktemp("log-worker") / "worker.log",
        name,
        {
            **FAST_ENV,
            "CONVEYOR_JOB_LOG_MAX_LINES": str(MAX_LINES),
            "CONVEYOR_JOB_LOG_MAX_LINE": str(MAX_LINE),
            "CONVEYOR_JOB_LOG_CAPTURE_PRINT": "true",
        },
        queues=QUEUE,
        args=("--concurrency", "2"),
    ).start()
    yield proc
    proc.stop()


def all_lines(api: TestClient, job_id: str, *, limit: int = 1000) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    after = 0
    while True:
        response = api.get(f"/api/v1/jobs/{job_id}/logs", params={"after": after, "limit": limit})
        assert response.status_code == 200, response.text
        page = response.json()
        lines.extend(page["items"])
        if page["next_cursor"] is None:
            return lines
        after = page["next_cursor"]


def sql_line_count(job_id: str) -> int:
    with session_scope() as session:
        return len(session.exec(select(JobLogLine.seq).where(JobLogLine.job_id == job_id)).all())


def test_ten_thousand_lines_are_capped_paged_and_redacted(api: TestClient, log_worker: WorkerProcess):
    job_id = submit(api, "log_lines", {"lines": 10_000, "prints": 3, "long_line": 5000}, queue=QUEUE)[
        "job_id"
    ]
    wait_status(api, job_id, {"finished"}, timeout=60)
    lines = all_lines(api, job_id, limit=700)
    assert len(lines) == MAX_LINES  # the cap holds, the note included
    assert [line["seq"] for line in lines] == list(range(1, MAX_LINES + 1))
    assert lines[-1]["message"].startswith("log truncated") and lines[-1]["level"] == "WARNING"
    assert sum("log truncated" in line["message"] for line in lines) == 1
    text = "\n".join(line["message"] for line in lines)
    assert SECRET not in text
    assert "line 100 password=" in text  # the line is there, its secret is not
    long = lines[0]
    assert long["level"] == "WARNING" and long["message"].endswith("[cut]")
    assert len(long["message"]) == MAX_LINE + len(" [cut]")
    printed = [line for line in lines if line["level"] == "PRINT"]
    assert [p["message"] for p in printed] == [f"printed  {i}" for i in range(3)]
    assert {line["attempt"] for line in lines} == {1}
    assert lines[5]["logger"] == "tests.chatty" and lines[5]["at"].endswith("Z")


def test_bad_cursor_and_other_tenants(api: TestClient, log_worker: WorkerProcess, app: Any):
    job_id = submit(api, "log_lines", {"lines": 3}, queue=QUEUE)["job_id"]
    wait_status(api, job_id, {"finished"})
    assert api.get(f"/api/v1/jobs/{job_id}/logs", params={"after": -1}).status_code == 422
    assert api.get(f"/api/v1/jobs/{job_id}/logs", params={"limit": 5000}).status_code == 422
    huge = api.get(f"/api/v1/jobs/{job_id}/logs", params={"after": 10**12})
    assert huge.status_code == 422 and "after" in huge.text
    for bad in ("abc", "-1", "99999999999999"):
        refused = api.get(f"/api/v1/jobs/{job_id}/logs/stream", headers={"Last-Event-ID": bad})
        assert refused.status_code == 422, (bad, refused.text)
        assert "Last-Event-ID" in refused.json()["detail"]
    assert api.get("/api/v1/jobs/not-a-job/logs").status_code == 404
    from tests.conftest import make_tenant

    other = make_tenant("admin", f"other-{uuid.uuid4().hex[:6]}")
    with TestClient(app, headers=other.headers) as stranger:
        response = stranger.get(f"/api/v1/jobs/{job_id}/logs")
        assert response.status_code == 404, response.text


def test_two_jobs_side_by_side_never_mix_lines(api: TestClient, log_worker: WorkerProcess):
    tags = ["alpha", "bravo"]
    ids = {
        tag: submit(api, "log_lines", {"lines": 200, "tag": tag, "step": 0.005}, queue=QUEUE)["job_id"]
        for tag in tags
    }
    for job_id in ids.values():
        wait_status(api, job_id, {"finished"}, timeout=30)
    from tests.test_jobs_e2e import sql_events

    def started_on(job_id: str) -> str | None:
        started = [e for e in sql_events(job_id) if e.event == "started"]
        return started[0].data["worker"] if started else None

    wait_until(lambda: all(started_on(j) for j in ids.values()), message="the starts in SQL")
    workers = {started_on(j) for j in ids.values()}
    assert len(workers) == 2, "the two jobs did not run side by side on two children"
    for tag, job_id in ids.items():
        messages = [line["message"] for line in all_lines(api, job_id)]
        assert len(messages) == 200
        assert all(m.startswith(f"{tag} line ") for m in messages), [m for m in messages if tag not in m][:3]
        assert [int(m.split()[2]) for m in messages] == list(range(200))


def test_logs_outlive_the_live_state_and_go_with_prune(api: TestClient, log_worker: WorkerProcess):
    job_id = submit(api, "log_lines", {"lines": 50}, queue=QUEUE)["job_id"]
    wait_status(api, job_id, {"finished"})
    wait_until(lambda: sql_line_count(job_id) == 50, timeout=15, message="the log copied into SQL")
    client = get_redis()
    wait_until(lambda: client.zscore(DIRTY, job_id) is None, message="the copy acknowledged")
    client.delete(job_key(job_id), lines_key(job_id), meta_key(job_id))  # Redis forgot the job
    lines = all_lines(api, job_id, limit=20)
    assert [line["seq"] for line in lines] == list(range(1, 51))
    assert lines[7]["message"] == " line 7"

    from jobs.clock import utcnow
    from jobs.history.retention import prune

    with session_scope() as session:
        row = session.get(Job, job_id)
        assert row is not None
        row.ended_at = utcnow() - timedelta(days=400)
        session.add(row)
    with session_scope() as session:
        report = prune(session=session, older_than=timedelta(days=365), client=client)
    assert report.log_lines >= 50
    assert sql_line_count(job_id) == 0
    assert api.get(f"/api/v1/jobs/{job_id}/logs").status_code == 404


def test_a_failed_job_keeps_what_it_logged_before_failing(api: TestClient, log_worker: WorkerProcess):
    job_id = submit(api, "log_lines", {"lines": 2, "fail": True}, queue=QUEUE)["job_id"]
    wait_status(api, job_id, {"failed"}, timeout=30)
    lines = all_lines(api, job_id)
    assert [line["message"] for line in lines] == [" line 0 password=[REDACTED]", " line 1"]


def test_the_stream_follows_until_the_end_and_resumes(
    live_server: ServerProcess, tenant: Tenant, api: TestClient, log_worker: WorkerProcess
):
    job_id = submit(api, "log_lines", {"lines": 40, "step": 0.05}, queue=QUEUE)["job_id"]
    url = f"{live_server.url}/api/v1/jobs/{job_id}/logs/stream"
    status, first, ended = collect_stream(url, tenant.headers, limit=10)
    assert status == 200 and not ended
    assert [int(e.id or 0) for e in first] == list(range(1, 11))
    resume = {**tenant.headers, "Last-Event-ID": "10"}
    status, rest, ended = collect_stream(url, resume, timeout=30)
    assert status == 200 and ended  # the server ended it once the job had ended
    assert [int(e.id or 0) for e in rest] == list(range(11, 41))
    assert rest[-1].data["message"] == " line 39"
    status, after_end, _ = collect_stream(url, {**tenant.headers, "Last-Event-ID": "40"})
    assert status == 204 and after_end == []


def test_a_stream_of_another_tenants_job_is_refused(
    live_server: ServerProcess, api: TestClient, log_worker: WorkerProcess
):
    job_id = submit(api, "log_lines", {"lines": 1}, queue=QUEUE)["job_id"]
    from tests.conftest import make_tenant

    other = make_tenant("admin", f"other-{uuid.uuid4().hex[:6]}")
    status, _, _ = collect_stream(f"{live_server.url}/api/v1/jobs/{job_id}/logs/stream", other.headers)
    assert status == 404


def test_the_cli_prints_and_follows_a_log(
    live_server: ServerProcess, tenant: Tenant, api: TestClient, log_worker: WorkerProcess
):
    from tests.test_cli import conveyor

    common = ["--url", live_server.url, "--key", tenant.key]
    job_id = submit(api, "log_lines", {"lines": 30, "step": 0.05}, queue=QUEUE)["job_id"]
    followed = conveyor("logs", job_id, "--follow", *common)
    assert followed.returncode == 0, followed.stderr
    printed = followed.stdout.splitlines()
    assert len(printed) == 30 and printed[-1].endswith("tests.chatty:  line 29"), printed[-3:]
    again = conveyor("logs", job_id, "--json", "--after", "25", *common)
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["seq"] for line in again.stdout.splitlines()] == [26, 27, 28, 29, 30]
    bad = conveyor("logs", job_id, "--after", "-3", *common)
    assert bad.returncode != 0 and "after" in bad.stderr


def test_the_client_pages_and_follows_a_log(
    live_server: ServerProcess, tenant: Tenant, api: TestClient, log_worker: WorkerProcess
):
    from conveyor_client import Client

    job_id = submit(api, "log_lines", {"lines": 25, "step": 0.04}, queue=QUEUE)["job_id"]
    with Client(live_server.url, api_key=tenant.key) as client:
        followed = list(client.follow_logs(job_id, timeout=30))
        assert [line.seq for line in followed] == list(range(1, 26))
        assert client.get(job_id).status == "finished"
        page = client.logs(job_id, after=10, limit=5)
        assert [line.seq for line in page.items] == [11, 12, 13, 14, 15] and page.next_cursor == 15
        assert [line.seq for line in client.follow_logs(job_id, after=20)] == [21, 22, 23, 24, 25]


def test_lines_of_jobs_side_by_side_in_one_process_stay_apart(env: Backend):
    """Threads and asyncio tasks in one process (as async tasks run): the context decides."""
    import asyncio
    import logging
    import threading

    from worker.job_log import capturing

    client = get_redis()
    logger = logging.getLogger("tests.side_by_side")
    logger.setLevel(logging.INFO)
    # Jobs SQL knows (the recorders drop the logs of jobs it does not), never run by a worker.
    ids = [seed_job(tenant="t-inproc") for _ in range(4)]

    def in_thread(job_id: str) -> None:
        with capturing(job_id, 1, client):
            for i in range(300):
                logger.info("%s %d", job_id, i)

    threads = [threading.Thread(target=in_thread, args=(job_id,)) for job_id in ids[:2]]
    for thread in threads:
        thread.start()

    async def in_task(job_id: str) -> None:
        with capturing(job_id, 1, client):
            for i in range(300):
                logger.info("%s %d", job_id, i)
                await asyncio.sleep(0)

    async def both() -> None:
        await asyncio.gather(*(in_task(job_id) for job_id in ids[2:]))

    run_async(both())
    for thread in threads:
        thread.join()
    from jobs.state.job_logs import read_live

    for job_id in ids:
        lines, exists = read_live(client, job_id, after=0, limit=1000)
        assert exists
        assert [line.message for line in lines] == [f"{job_id} {i}" for i in range(300)]


def test_log_streams_count_against_the_stream_caps(
    backend: Backend,
    tmp_path_factory: pytest.TempPathFactory,
    api: TestClient,
    tenant: Tenant,
    log_worker: WorkerProcess,
):
    import httpx

    server = ServerProcess(
        backend, tmp_path_factory.mktemp("capped") / "server.log", {"CONVEYOR_MAX_STREAMS_PER_KEY": "1"}
    ).start()
    try:
        job_id = submit(api, "log_lines", {"lines": 100, "step": 0.05}, queue=QUEUE)["job_id"]
        url = f"{server.url}/api/v1/jobs/{job_id}/logs/stream"
        with httpx.stream("GET", url, headers=tenant.headers, timeout=30) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            second = httpx.get(url, headers=tenant.headers, timeout=10)
            assert second.status_code == 429, second.text
            assert "CONVEYOR_MAX_STREAMS_PER_KEY" in second.json()["detail"] and second.headers["Retry-After"]
    finally:
        server.stop()


def test_under_lambda_a_log_stream_answers_one_batch_and_resumes(
    api: TestClient, log_worker: WorkerProcess, monkeypatch: pytest.MonkeyPatch
):
    """Lambda delivers a response only when it ends: each stream is one batch of lines, and the
    client comes back with Last-Event-ID for the next (as the snapshot stream does there)."""
    from tests.live_support import read_events

    job_id = submit(api, "log_lines", {"lines": 40, "step": 0.05}, queue=QUEUE)["job_id"]
    wait_until(lambda: all_lines(api, job_id), message="a first line")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "conveyor-api")
    seqs: list[int] = []
    batches = 0
    for _ in range(200):
        headers = {"Last-Event-ID": str(seqs[-1] if seqs else 0)}
        with api.stream("GET", f"/api/v1/jobs/{job_id}/logs/stream", headers=headers) as response:
            if response.status_code == 204:
                break
            assert response.status_code == 200
            batch = [int(e.id or 0) for e in read_events(response.iter_lines())]
        assert batch, "a Lambda stream ended without a line"
        seqs.extend(batch)
        batches += 1
    assert seqs == list(range(1, 41))
    assert batches >= 2, "one stream carried the whole log: it did not end after its first batch"


def test_async_jobs_side_by_side_in_one_child_keep_their_own_lines(
    api: TestClient, backend: Backend, tmp_path: Path
):
    """Two async jobs on one child's event loop log in turns; each line lands in its own job."""
    proc = WorkerProcess(
        backend,
        tmp_path / "async-logs.log",
        f"alogs-{uuid.uuid4().hex[:6]}",
        FAST_ENV,
        queues="isolated",
        args=("--concurrency", "1"),
    ).start()
    try:
        ids = {
            tag: submit(api, "async_log_lines", {"lines": 60, "tag": tag, "step": 0.01}, queue="isolated")[
                "job_id"
            ]
            for tag in ("alpha", "bravo")
        }
        snaps = {tag: wait_status(api, job_id, {"finished"}, timeout=30) for tag, job_id in ids.items()}
        first, second = snaps["alpha"], snaps["bravo"]
        assert first["started_at"] < second["ended_at"] and second["started_at"] < first["ended_at"], (
            "the two async jobs did not overlap"
        )
        for tag, job_id in ids.items():
            messages = [line["message"] for line in all_lines(api, job_id)]
            assert messages == [f"{tag} line {i}" for i in range(60)]
    finally:
        proc.stop()
