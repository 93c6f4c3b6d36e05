"""`conveyor watch` and `conveyor submit --wait`: live progress, then exit 0/1/2 (3 on timeout)."""

from __future__ import annotations

import json
from typing import Any

from cli.watch import format_eta
from jobs.state.lifecycle import record
from jobs.status import JobStatus
from tests.conftest import ServerProcess, Tenant, seed_job
from tests.test_cli import conveyor


def common(server: ServerProcess, tenant: Tenant) -> list[str]:
    return ["--url", server.url, "--key", tenant.key]


def submit_id(server: ServerProcess, tenant: Tenant, task: str, *params: str) -> str:
    done = conveyor("submit", task, *params, "--json", *common(server, tenant))
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["job_id"])


def test_watch_draws_progress_and_exits_0_when_finished(
    live_server: ServerProcess, worker: Any, tenant: Tenant
):
    job_id = submit_id(live_server, tenant, "long_task", "-p", "n=20", "-p", "delay=0.05")
    done = conveyor("watch", job_id, *common(live_server, tenant))
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr and "finished" in done.stderr  # the bar, on stderr
    assert done.stdout.startswith(job_id) and '{"sum": 190, "n": 20}' in done.stdout


def test_watch_json_prints_every_snapshot_as_a_line(live_server: ServerProcess, worker: Any, tenant: Tenant):
    job_id = submit_id(live_server, tenant, "long_task", "-p", "n=20", "-p", "delay=0.05")
    done = conveyor("watch", job_id, "--json", *common(live_server, tenant))
    assert done.returncode == 0, done.stderr
    snaps = [json.loads(line) for line in done.stdout.splitlines()]
    assert [s["seq"] for s in snaps] == sorted({s["seq"] for s in snaps})
    assert snaps[-1]["status"] == "finished"
    assert len({s["progress"] for s in snaps if s["status"] == "started"}) >= 4


def test_watch_exit_codes_for_failed_canceled_and_timeout(
    live_server: ServerProcess, worker: Any, tenant: Tenant
):
    failed = submit_id(live_server, tenant, "always_fails", "-p", "message=nope")
    done = conveyor("watch", failed, *common(live_server, tenant))
    assert done.returncode == 1 and "ValueError: nope" in done.stdout

    canceled = seed_job(tenant.name)
    record(canceled, JobStatus.CANCELED, event="canceled")
    done = conveyor("watch", canceled, "--via", "long_poll", *common(live_server, tenant))
    assert done.returncode == 2 and "canceled" in done.stdout

    stuck = seed_job(tenant.name)
    done = conveyor("watch", stuck, "--timeout", "1", *common(live_server, tenant))
    assert done.returncode == 3 and "still queued" in done.stderr

    missing = conveyor("watch", "6f1c0000-0000-4000-8000-000000000000", *common(live_server, tenant))
    assert missing.returncode == 1 and "404" in missing.stderr


def test_submit_wait_follows_with_the_bar(live_server: ServerProcess, worker: Any, tenant: Tenant):
    done = conveyor(
        "submit", "long_task", "-p", "n=10", "-p", "delay=0.02", "--wait", *common(live_server, tenant)
    )
    assert done.returncode == 0, done.stderr
    assert "submitted " in done.stderr and "100%" in done.stderr
    assert "finished" in done.stdout


def test_eta_format():
    assert format_eta(None) == ""
    assert format_eta(4.4) == "ETA 4s"
    assert format_eta(65) == "ETA 1m05s"
    assert format_eta(7322) == "ETA 2h02m"
