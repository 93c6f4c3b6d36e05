"""The README's first command: `conveyor dev` brings up API + worker on embedded defaults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from jobs.embedded import free_port
from tests.conftest import ROOT
from tests.services import wait_until


def test_conveyor_dev_runs_a_job_end_to_end_and_stops_cleanly(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["CONVEYOR_ENVIRONMENT"] = "development"
    env.pop("CONVEYOR_SECRET_KEY", None)
    env["PYTHONPATH"] = str(ROOT)
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=60, interval=0.2, message="conveyor dev to be ready")
        key = (tmp_path / ".conveyor" / "dev-key").read_text().strip()
        assert key in (tmp_path / "dev.log").read_text(), "the dev key is printed"
        headers = {"Authorization": f"Bearer {key}"}
        job = httpx.post(
            f"{base}/api/v1/jobs", json={"task": "long_task", "payload": {"n": 50}}, headers=headers
        ).json()
        final = wait_until(
            lambda: (
                (s := httpx.get(f"{base}/api/v1/jobs/{job['job_id']}", headers=headers).json())["status"]
                == "finished"
                and s
            ),
            timeout=30,
            interval=0.1,
            message="the job to finish",
        )
        assert final["result"] == {"sum": 1225, "n": 50}
        assert (tmp_path / ".conveyor" / "conveyor.db").exists()
        assert not (tmp_path / ".env").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, (tmp_path / "dev.log").read_text()
    time.sleep(0.2)
    children = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True).stdout
    assert children.strip() == "", "conveyor dev left processes behind"
