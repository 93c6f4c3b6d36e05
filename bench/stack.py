"""A throwaway stack for the HTTP benchmarks: Redis, SQLite, an API key, uvicorn servers, a worker.

Every server is its own process (uvicorn, one worker, as `conveyor api`
serves it), so the benchmark client's CPU is not the server's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.process_limits import raise_fd_limit  # noqa: E402  (the benchmarks import it from here)

__all__ = ["ROOT", "Stack", "raise_fd_limit", "rss_bytes"]


def rss_bytes(pid: int) -> int:
    """A process's resident memory, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Stack:
    """Redis (embedded unless REDIS_URL is set), SQLite in a temp dir, migrated, with one API key."""

    def __init__(self, queues: list[str], extra_env: dict[str, str] | None = None) -> None:
        from jobs.embedded import EmbeddedRedis

        self.tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
        self.redis_server = None
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            self.redis_server = EmbeddedRedis(self.tmp / "redis", persist=False)
            redis_url = self.redis_server.start()
        self.redis_url = redis_url
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DATABASE_URL": f"sqlite:///{self.tmp / 'bench.db'}",
            "CONVEYOR_ENVIRONMENT": "test",
            "CONVEYOR_SECRET_KEY": "bench",
            "CONVEYOR_TASK_MODULES": '["worker.tasks", "bench.tasks"]',
            "CONVEYOR_QUEUES": str(queues).replace("'", '"'),
            "CONVEYOR_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            # The benchmarks measure capacity: thousands of streams from one key, which the
            # stream caps (README, Limits) exist to refuse. The open-file limit still bounds them.
            "CONVEYOR_MAX_STREAMS_PER_KEY": "100000",
            "CONVEYOR_MAX_STREAMS_PER_PROCESS": "1000000",
            **(extra_env or {}),
        }
        os.environ.update(self.env)
        from jobs.settings import get_settings

        get_settings.cache_clear()
        from jobs.history.migrate import upgrade

        upgrade()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.tenant, self.key = "bench", self.create_key()

    def create_key(self) -> str:
        from jobs.access.auth import create_key
        from jobs.history.db import session_scope

        with session_scope() as session:
            _, key = create_key(session, tenant="bench", role="admin")
        return key

    def serve(self, app: str, port: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """uvicorn serving ``app`` with one worker (``extra_env`` on top of the stack's), and wait
        until it answers."""
        return self.serve_command(
            [
                sys.executable, "-m", "uvicorn", app,
                "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", "--no-access-log", "--log-level", "warning",
                "--backlog", "8192",
            ],
            port,
            extra_env,
        )  # fmt: skip

    def serve_command(
        self, argv: list[str], port: int, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a server (``argv``) that listens on ``port``, and wait until /healthz answers."""
        log = (self.tmp / f"server-{port}.log").open("ab")
        env = {**self.env, **(extra_env or {})}
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        app = " ".join(argv[2:4])
        self.processes.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{app} exited; see {log.name}")
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                return proc
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"{app} did not answer on port {port}")

    def start_worker(self, queues: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / "worker.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--queues", queues],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.redis_server is not None:
            self.redis_server.stop()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {self.tmp} (logs)")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
