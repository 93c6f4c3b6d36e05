"""`conveyor submit-batch FILE.jsonl [--wait]` with one aggregate bar, and `conveyor watch BATCH_ID`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import ServerProcess, Tenant
from tests.test_cli import conveyor


def common(server: ServerProcess, tenant: Tenant) -> list[str]:
    return ["--url", server.url, "--key", tenant.key]


def jobs_file(tmp_path: Path, lines: list[dict[str, Any]]) -> str:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    return str(path)


def test_submit_batch_wait_draws_one_bar_for_the_whole_batch(
    live_server: ServerProcess, worker: Any, tenant: Tenant, tmp_path: Path
):
    lines = [{"task": "long_task", "payload": {"n": 3, "delay": 0.02}} for _ in range(30)]
    done = conveyor("submit-batch", jobs_file(tmp_path, lines), "--wait", *common(live_server, tenant))
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr and "30/30 finished" in done.stderr
    assert done.stderr.count("submitted batch") == 1
    batch_id = done.stdout.split()[0]
    assert done.stdout.strip() == f"{batch_id}  finished  30/30 finished"


def test_submit_batch_then_watch_it_and_the_exit_code_says_some_failed(
    live_server: ServerProcess, worker: Any, tenant: Tenant, tmp_path: Path
):
    lines = [{"task": "long_task", "payload": {"n": 1, "delay": 0}}, {"task": "always_fails", "payload": {}}]
    done = conveyor("submit-batch", jobs_file(tmp_path, lines), "--json", *common(live_server, tenant))
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert len(created["job_ids"]) == 2
    watched = conveyor("watch", created["batch_id"], *common(live_server, tenant))
    assert watched.returncode == 1, watched.stderr
    assert "1/2 finished · 1 failed" in watched.stdout
    as_json = conveyor("watch", created["batch_id"], "--json", *common(live_server, tenant))
    assert json.loads(as_json.stdout.splitlines()[-1])["counts"]["failed"] == 1


def test_submit_batch_refuses_a_bad_file_and_a_bad_job_clearly(
    live_server: ServerProcess, tenant: Tenant, tmp_path: Path
):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "long_task"}\nnot json\n')
    done = conveyor("submit-batch", str(bad), *common(live_server, tenant))
    assert done.returncode != 0 and f"{bad}:2: not valid JSON" in done.stderr
    lines = [{"task": "long_task", "payload": {}}, {"task": "long_task", "payload": {"n": "x"}}]
    done = conveyor("submit-batch", jobs_file(tmp_path, lines), *common(live_server, tenant))
    assert done.returncode != 0 and "jobs[1].payload.n" in done.stderr
    missing = conveyor("watch", "00000000-0000-4000-8000-000000000000", *common(live_server, tenant))
    assert missing.returncode != 0 and "404" in missing.stderr
