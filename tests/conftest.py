"""Fixtures: real Redis and PostgreSQL (see tests/services.py), both SQL backends, real workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from tests.services import Services, provision, wait_until

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Settings every test process (and every worker it starts) shares.
TEST_ENV = {
    "CONVEYOR_ENVIRONMENT": "test",
    "CONVEYOR_SECRET_KEY": "test-secret-key-not-for-production-7Qz9xWk2",
    "CONVEYOR_QUEUES": '["default", "other", "control", "isolated", "logs"]',
    "CONVEYOR_TASK_MODULES": (
        '["worker.tasks", "tests.control_tasks", "tests.history_tasks", "tests.log_tasks"]'
    ),
    "CONVEYOR_LOG_LEVEL": "WARNING",
    # Webhooks (tests/test_webhooks.py): receivers on loopback, quick retries and timeouts; sent
    # only by the workers that module starts (so a test can stop every sender there is).
    "CONVEYOR_WEBHOOK_SENDERS": "0",
    "CONVEYOR_WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1", "localhost"]',
    "CONVEYOR_WEBHOOK_RETRY_BASE": "0.3",
    "CONVEYOR_WEBHOOK_TIMEOUT": "1.5",
    "CONVEYOR_WEBHOOK_POLL_INTERVAL": "0.1",
}

# Short heartbeats and reconciler intervals for workers whose tests wait on them.
FAST_ENV = {
    "CONVEYOR_HEARTBEAT_INTERVAL": "1",
    "CONVEYOR_HEARTBEAT_TTL": "3",
    "CONVEYOR_RECONCILE_INTERVAL": "0.5",
    "CONVEYOR_RECONCILE_GRACE": "2",
    "CONVEYOR_CONTROL_POLL_INTERVAL": "0.05",
    "CONVEYOR_RECORDER_CLAIM_IDLE": "3",
}
os.environ.update(TEST_ENV)
for name in ("REDIS_URL", "DATABASE_URL", "CONVEYOR_REDIS_URL", "CONVEYOR_DATABASE_URL"):
    os.environ.pop(name, None)


def pytest_configure(config: pytest.Config) -> None:
    config._conveyor_services = provision()  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    services: Services | None = getattr(config, "_conveyor_services", None)
    if services is not None:
        services.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    services: Services = config._conveyor_services  # type: ignore[attr-defined]
    lines = [
        f"conveyor redis: {services.redis.how} -> {services.redis.url}",
        f"conveyor postgres: {services.postgres.how}"
        + (f" -> {services.postgres.url}" if services.postgres.url else ""),
    ]
    if services.postgres.url is None:
        lines.append(
            "!!! NO POSTGRESQL: the Postgres leg of the suite is SKIPPED"
            + (" -- and CI=true, so it FAILS" if IN_CI else "")
            + " (install PostgreSQL binaries, run Docker, or set TEST_DATABASE_URL) !!!"
        )
    return lines


@dataclass(frozen=True)
class Backend:
    name: str
    database_url: str
    redis_url: str

    def env(self) -> dict[str, str]:
        return {**TEST_ENV, "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url}


def _with_db_index(url: str, index: int) -> str:
    base, _, last = url.rpartition("/")
    return f"{base}/{index}" if last.isdigit() else f"{url.rstrip('/')}/{index}"


def _create_postgres_database(admin_url: str) -> tuple[str, Any]:
    import psycopg

    name = f"conveyor_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}", drop


def configure(env: dict[str, str]) -> None:
    """Point this process's settings, engine and clients at ``env``."""
    from jobs.access.auth import clear_cache
    from jobs.history.db import reset_engine
    from jobs.settings import get_settings
    from jobs.state.redis_conn import reset_redis

    os.environ.update(env)
    get_settings.cache_clear()
    reset_engine()
    reset_redis()
    clear_cache()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """One SQL backend for the whole session (sqlite, then postgres), each with its own Redis db."""
    services: Services = request.config._conveyor_services  # type: ignore[attr-defined]
    drop = None
    if request.param == "postgres":
        if services.postgres.url is None:
            message = "no PostgreSQL available (see the pytest header)"
            if IN_CI:
                pytest.fail(f"CI=true and {message}: the Postgres leg must run in CI", pytrace=False)
            pytest.skip(f"SKIPPING THE POSTGRES LEG: {message}")
        database_url, drop = _create_postgres_database(services.postgres.url)
        redis_url = _with_db_index(services.redis.url or "", 2)
    else:
        database_url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'conveyor.db'}"
        redis_url = _with_db_index(services.redis.url or "", 1)
    backend = Backend(request.param, database_url, redis_url)
    Redis.from_url(redis_url).flushdb()
    configure(backend.env())
    from jobs.history.migrate import upgrade

    upgrade()
    yield backend
    from jobs.history.db import reset_engine

    reset_engine()
    if drop is not None:
        drop()


@pytest.fixture
def env(backend: Backend) -> Iterator[Backend]:
    """Configure this process for ``backend`` (settings cache, engine, Redis client)."""
    configure(backend.env())
    yield backend


class PrivateWorld:
    """A Redis and a database of one test's own, so that no shared worker or reconciler sees them.

    For tests that restart Redis empty: with the shared database, the session's reconcilers would
    see the test's jobs as lost from *their* Redis and enqueue them there too.
    """

    def __init__(self, shared: Backend, tmp_path: Path, admin_url: str | None) -> None:
        from jobs.embedded import EmbeddedRedis

        self._dir = tmp_path / "private-redis"
        self.server = EmbeddedRedis(self._dir, persist=False)
        redis_url = self.server.start()
        self._drop = None
        if shared.name == "postgres" and admin_url:
            database_url, self._drop = _create_postgres_database(admin_url)
        else:
            database_url = f"sqlite:///{tmp_path / 'private.db'}"
        self.backend = Backend(shared.name, database_url, redis_url)
        self.redis_url = redis_url
        configure(self.backend.env())
        from jobs.history.migrate import upgrade

        upgrade()
        self.tenant = make_tenant()

    def restart_redis_empty(self) -> None:
        from jobs.embedded import EmbeddedRedis

        port = self.server.port
        self.server.stop()
        self.server = EmbeddedRedis(self._dir, port=port, persist=False)
        self.server.start()

    def close(self) -> None:
        self.server.stop()
        from jobs.history.db import reset_engine

        reset_engine()
        if self._drop is not None:
            self._drop()


@pytest.fixture
def private_world(env: Backend, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PrivateWorld]:
    services: Services = request.config._conveyor_services  # type: ignore[attr-defined]
    world = PrivateWorld(env, tmp_path, services.postgres.url)
    try:
        yield world
    finally:
        world.close()
        configure(env.env())


@pytest.fixture(autouse=True)
def _no_leftover_jobs(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, the jobs it left waiting or running are canceled.

    Tests share one database and the session's workers: a long job a test left behind keeps
    those workers busy through later tests, and a job left queued in a private Redis the test
    has since stopped (or seeded in no queue on purpose) is, to the shared reconcilers, a job
    Redis lost, which their sweeps would enqueue for the shared workers. Production wants that;
    a test suite does not. Canceled through the control path where the job's Redis answers,
    else in SQL only.
    """
    if "env" not in request.fixturenames:
        yield
        return
    from jobs.clock import utcnow

    started = utcnow()
    yield
    import sqlalchemy as sa

    from jobs.actions.control import cancel_job
    from jobs.history.db import session_scope
    from jobs.history.models import Job
    from jobs.state.redis_conn import get_redis
    from jobs.status import TERMINAL

    configure(request.getfixturevalue("backend").env())  # a test may have pointed elsewhere
    ended = [s.value for s in TERMINAL]
    left = sa.select(Job.job_id).where(Job.created_at >= started, Job.status.not_in(ended))  # type: ignore[attr-defined]
    with session_scope() as session:
        job_ids = list(session.execute(left).scalars())
    unreachable = []
    for job_id in job_ids:
        try:
            with session_scope() as session:
                cancel_job(session=session, client=get_redis(), job_id=job_id, tenant=None, by="test cleanup")
        except Exception:  # ended meanwhile (refused), or its Redis is gone
            unreachable.append(job_id)
    if unreachable:
        with session_scope() as session:
            session.execute(
                sa.update(Job)
                .where(Job.job_id.in_(unreachable), Job.status.not_in(ended))  # type: ignore[attr-defined]
                .values(status="canceled", ended_at=utcnow())
            )


@pytest.fixture
def redis_client(env: Backend) -> Redis:
    from jobs.state.redis_conn import get_redis

    return get_redis()


class WorkerProcess:
    """A real `conveyor worker` child process (in its own session, so it can be killed as a whole)."""

    def __init__(
        self,
        backend: Backend,
        log_path: Path,
        name: str,
        extra_env: dict[str, str] | None = None,
        queues: str = "default",
        args: tuple[str, ...] = (),
    ):
        self.backend = backend
        self.args = args
        self.log_path = log_path
        self.name = name
        self.extra_env = extra_env or {}
        self.queues = queues
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.backend.env(), **self.extra_env}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "worker",
                "--name",
                self.name,
                "--queues",
                self.queues,
                *self.args,
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        from rq import Worker

        connection = Redis.from_url(env.get("REDIS_URL", self.backend.redis_url))
        wait_until(  # the pool's children register as `<name>.<index>.<generation>`
            lambda: (
                any(w.name.startswith(f"{self.name}.") for w in Worker.all(connection=connection))
                or self._died()
            ),
            timeout=30,
            message=f"worker {self.name} to register",
        )
        if self._died():
            raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-4000:]}")
        return self

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self, timeout: float = 20) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_hard()

    def kill_hard(self) -> None:
        """SIGKILL the worker and every process under it (work-horse, recorder, scheduler) at once."""
        if self.process is None or self.process.poll() is not None:
            return
        pids = [*descendants(self.process.pid), self.process.pid]
        for pid in pids:  # freeze them all first, so none reacts to another's death
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (Linux /proc), children first found first."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except FileNotFoundError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.append(child)
                    pending.append(child)
    return found


@pytest.fixture(scope="session")
def worker(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One real worker process per backend, shared by the tests that need jobs to run. One child:
    the tests that use it hold a job queued behind another (tests/test_worker_pool.py has the
    pools that run several at once)."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    name = f"test-{backend.name}-{uuid.uuid4().hex[:6]}"
    proc = WorkerProcess(backend, log_path, name, args=("--concurrency", "1")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def control_worker(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A worker on the `control` queue with short heartbeats and a fast reconciler."""
    log_path = tmp_path_factory.mktemp("control-worker") / "worker.log"
    name = f"control-{backend.name}-{uuid.uuid4().hex[:6]}"
    proc = WorkerProcess(backend, log_path, name, extra_env=FAST_ENV, queues="control").start()
    yield proc
    proc.stop()


@dataclass(frozen=True)
class Tenant:
    name: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_tenant(role: str = "admin", name: str | None = None) -> Tenant:
    from jobs.access.auth import create_key
    from jobs.history.db import session_scope

    tenant = name or f"t-{uuid.uuid4().hex[:10]}"
    with session_scope() as session:
        row, key = create_key(session, tenant=tenant, role=role)
    return Tenant(tenant, key, row.id)


@pytest.fixture
def tenant(env: Backend) -> Tenant:
    """A fresh tenant with an admin key (tenants isolate tests from each other)."""
    return make_tenant()


def seed_job(tenant: str = "t-seeded", task: str = "long_task", queue: str = "other") -> str:
    """A job that exists in SQL and in Redis but is in no RQ queue: for driving transitions by hand."""
    from jobs.clock import utcnow
    from jobs.history.db import session_scope
    from jobs.history.models import Job
    from jobs.history.store import add_job
    from jobs.snapshot import row_fields
    from jobs.state.live import live_store
    from jobs.state.redis_conn import get_redis

    now = utcnow()
    job = Job(
        job_id=str(uuid.uuid4()),
        tenant=tenant,
        task=task,
        queue=queue,
        status="queued",
        created_at=now,
        enqueued_at=now,
        updated_at=now,
    )
    with session_scope() as session:
        add_job(session, job=job)
    live_store(get_redis()).seed(row_fields(job), tenant=tenant)
    return job.job_id


@pytest.fixture
def app(env: Backend) -> Any:
    from api.app import create_app

    return create_app()


@pytest.fixture
def api(app: Any, tenant: Tenant) -> Iterator[Any]:
    """A TestClient authenticated as ``tenant``."""
    from fastapi.testclient import TestClient

    with TestClient(app, headers=tenant.headers) as client:
        yield client


class ServerProcess:
    """A real uvicorn serving the app, for clients that need a socket (CLI, streams, browsers)."""

    def __init__(
        self,
        backend: Backend,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        log_level: str = "warning",
        *,
        via_cli: bool = False,
        preexec_fn: Any = None,
        args: tuple[str, ...] = (),
    ):
        """``via_cli``: serve with `conveyor api` (its protocol and limits) instead of bare uvicorn;
        ``args``: more of uvicorn's options (bare uvicorn only)."""
        from jobs.embedded import free_port

        self.log_level = log_level
        self.backend = backend
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = extra_env or {}
        self.via_cli = via_cli
        self.preexec_fn = preexec_fn
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        import httpx

        env = {**os.environ, **self.backend.env(), **self.extra_env}
        if self.via_cli:
            argv = ["-m", "cli.main", "api", "--host", "127.0.0.1", "--port", str(self.port)]
        else:
            argv = ["-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(self.port)]
            argv += ["--log-level", self.log_level, *self.args]
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            env=env,
            cwd=ROOT,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=self.preexec_fn,
        )

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30, interval=0.1, message="the API server to answer")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="session")
def live_server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(backend, tmp_path_factory.mktemp("server") / "server.log").start()
    yield server
    server.stop()


@pytest.fixture
def short_cancel_grace(env: Backend, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The API (this process) gives running jobs 1 s to obey a cancel before they are stopped by force."""
    monkeypatch.setenv("CONVEYOR_CANCEL_GRACE", "1")
    configure(env.env())
    yield
    monkeypatch.delenv("CONVEYOR_CANCEL_GRACE")
    configure(env.env())
