"""`conveyor dev`: Conveyor in one process tree on embedded defaults.

Starts an embedded Redis-compatible server (unless REDIS_URL is set), uses
SQLite under the data directory (unless DATABASE_URL is set), migrates,
makes sure a development admin key exists, and runs the API and one worker
as child processes until interrupted. If any child dies, everything stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from jobs.settings import create_private_file, get_settings, stored_dev_secret


def dev_key_path() -> Path:
    return get_settings().data_dir / "dev-key"


def dev_secret(data_dir: Path) -> str:
    """A random secret kept in the data directory (0600), so sessions survive restarts in development."""
    return stored_dev_secret(data_dir)


def ensure_dev_key() -> str:
    """The saved development admin key if it still works, else a new one (saved 0600)."""
    from jobs.access.auth import authenticate, create_key
    from jobs.history.db import session_scope

    path = dev_key_path()
    if path.exists():
        key = path.read_text().strip()
        if key and authenticate(key) is not None:
            return key
    with session_scope() as session:
        _, key = create_key(session, tenant="dev", role="admin", name="dev admin key")
    create_private_file(path, key + "\n")
    return key


def _banner(url: str, key: str, redis_url: str, database_url: str) -> str:
    return f"""
  Conveyor is running.

    Web UI     {url}/           (sign in with the dev key)
    API        {url}/api/v1     (docs: {url}/docs)
    Redis      {redis_url}
    Database   {database_url}
    Dev key    {key}

  Try it:
    curl -s -X POST {url}/api/v1/jobs -H "Authorization: Bearer {key}" \\
         -H "Content-Type: application/json" -d '{{"task": "long_task", "payload": {{"n": 50}}}}'
    conveyor submit long_task -p n=50 --wait

  Ctrl+C stops everything.
"""


def run_dev(*, host: str = "127.0.0.1", port: int = 8000) -> int:
    from jobs.embedded import EmbeddedRedis
    from jobs.history.migrate import upgrade

    settings = get_settings()
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)

    embedded: EmbeddedRedis | None = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(data_dir / "redis", persist=True)
        env["REDIS_URL"] = embedded.start()
    env.setdefault("DATABASE_URL", settings.sqlalchemy_url)
    # Settings already chose the secret (the kept data_dir/secret-key unless one was given).
    env.setdefault("CONVEYOR_SECRET_KEY", settings.secret_key)
    for name in ("REDIS_URL", "DATABASE_URL", "CONVEYOR_SECRET_KEY"):
        if name in env:
            os.environ[name] = env[name]
    get_settings.cache_clear()

    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        upgrade()
        key = ensure_dev_key()
        python = sys.executable
        children["worker"] = subprocess.Popen([python, "-m", "cli.main", "worker"], env=env)
        children["api"] = subprocess.Popen(
            [python, "-m", "cli.main", "api", "--host", host, "--port", str(port)],
            env=env,
        )
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print(_banner(f"http://{shown_host}:{port}", key, env["REDIS_URL"], env["DATABASE_URL"]), flush=True)
        while not stopping:
            for role, child in children.items():
                if child.poll() is not None:
                    print(
                        f"conveyor dev: the {role} exited with {child.returncode}; stopping", file=sys.stderr
                    )
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if embedded is not None:
            embedded.stop()
