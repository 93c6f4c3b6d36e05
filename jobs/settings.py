"""Conveyor's settings: one class, read from the environment and `.env`.

Every variable is documented in `.env.example`. `REDIS_URL` and
`DATABASE_URL` keep their conventional names; everything else is prefixed
`CONVEYOR_`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

# The value every earlier release shipped with: refused everywhere, so an old `.env` cannot keep it.
DEFAULT_SECRET = "change-me-in-production"
SECRET_MIN_LENGTH = 32
SECRET_HOW_TO = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
SECRET_FILE = "secret-key"
# The caps CONVEYOR_TASK_LIMITS may set per task, with the largest value each accepts.
TASK_CAPS = {"max_timeout_seconds": 7 * 86400, "max_running": 1_000_000}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", env_prefix="CONVEYOR_"
    )

    environment: Literal["development", "production", "test"] = "development"

    database_url: str = Field(
        default="", validation_alias=AliasChoices("DATABASE_URL", "CONVEYOR_DATABASE_URL")
    )
    database_password: str = ""
    redis_url: str = Field(default="", validation_alias=AliasChoices("REDIS_URL", "CONVEYOR_REDIS_URL"))
    data_dir: Path = Path(".conveyor")

    # Empty means: production refuses to start; development keeps a random one in the data
    # directory (data_dir/secret-key, 0600); test mode draws a random one per process.
    secret_key: str = ""
    # The web UI's sign-in: how long a session cookie lasts (seconds).
    session_max_age: int = Field(default=8 * 3600, ge=60, le=30 * 86400)

    # The application's task modules (configuration, not a code tie: they depend on jobs/ only,
    # see jobs/progress_protocol.py). The default is the example package beside the worker.
    task_modules: list[str] = ["worker.tasks"]
    default_queue: str = "default"
    queues: list[str] = ["default"]

    job_timeout: int = Field(default=900, ge=1)
    result_ttl: int = Field(default=3600, ge=0)
    failure_ttl: int = Field(default=7 * 86400, ge=0)
    snapshot_ttl: int = Field(default=7 * 86400, ge=60)

    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    progress_interval: float = Field(default=0.05, ge=0)
    progress_journal_interval: float = Field(default=1.0, ge=0)
    heartbeat_interval: float = Field(default=2.0, gt=0)
    heartbeat_ttl: int = Field(default=10, ge=2)

    # Job control (see docs/reliability.md).
    cancel_grace: float = Field(default=10.0, ge=0)
    control_poll_interval: float = Field(default=0.2, gt=0, le=5)
    shutdown_grace: float = Field(default=20.0, ge=0)

    # Retries: a task's default backoff when it declares retries but no intervals.
    retry_backoff: float = Field(default=2.0, gt=0)
    retry_backoff_max: float = Field(default=600.0, gt=0)
    retry_jitter: float = Field(default=0.2, ge=0, lt=1)

    # The reconciler (inside every worker's recorder process, or `conveyor reconcile`).
    reconcile_interval: float = Field(default=5.0, ge=0)
    # A waiting job untouched this long with no RQ record of it is lost (a submit takes milliseconds
    # between its SQL write and its enqueue, so seconds are plenty).
    reconcile_grace: float = Field(default=5.0, ge=0)
    # Every waiting job is checked this often; those touched within the recent window more often,
    # since a Redis failover loses only the last writes; and every pass for a while after a loss.
    reconcile_sweep_interval: float = Field(default=300.0, gt=0)
    reconcile_recent_interval: float = Field(default=30.0, gt=0)
    reconcile_recent_window: float = Field(default=900.0, gt=0)
    recorder_claim_idle: float = Field(default=30.0, gt=0)

    # Recurring jobs declared with `@cron` run in the worker's recorder process.
    cron_enabled: bool = True
    cron_tenant: str = Field(default="system", min_length=1, max_length=64)

    # Markers of secret keys, matched as whole words of a key (see jobs/access/redaction.py).
    redact_keys: list[str] = [
        "password", "passwords", "passwd", "pwd", "pass", "passphrase", "secret", "secrets", "secretkey",
        "token", "apikey", "auth", "authorization", "bearer", "jwt", "credential", "credentials",
        "privatekey", "signingkey", "clientsecret", "accesskey", "dsn", "cookie", "cookies", "session",
    ]  # fmt: skip

    # Results: above the inline limit a result is stored by reference (job_results table, served
    # at GET /api/v1/jobs/{id}/result); above the hard limit the job fails with ResultTooLarge.
    result_inline_max_bytes: int = Field(default=16_384, ge=256)
    result_max_bytes: int = Field(default=10 * 1_048_576, ge=1024)
    result_blob_ttl: int = Field(default=7 * 86400, ge=60)

    # History and analytics.
    retention_days: int = Field(default=90, ge=1)
    event_compact_days: int = Field(default=30, ge=0)
    stats_window: int = Field(default=86400, ge=60)
    analytics_max_days: int = Field(default=366, ge=1)

    # Queue health verdict thresholds (GET /api/v1/queue/stats).
    health_max_backlog: int = Field(default=1000, ge=1)
    health_max_wait: float = Field(default=300.0, gt=0)
    health_max_failure_rate: float = Field(default=0.10, ge=0, le=1)
    health_min_ended: int = Field(default=20, ge=1)

    # GET /metrics needs an admin key unless this is true (a scraper on a private network).
    metrics_public: bool = False
    live_heartbeat: float = Field(default=15.0, gt=0)
    live_send_timeout: float = Field(default=10.0, gt=0)
    live_buffer: int = Field(default=32, ge=1, le=10_000)

    # Proxies whose X-Forwarded-For/-Proto headers are believed (uvicorn's forwarded_allow_ips):
    # comma-separated addresses or networks, or "*". Behind a TLS proxy at one of them, the
    # session cookie is Secure and redirects keep https.
    trusted_proxies: str = Field(default="127.0.0.1", min_length=1)

    compat_endpoints: bool = True
    metrics_namespace: str = "Conveyor"
    log_level: str = "INFO"

    # Issue 11, bad input: how deep a JSON body, a form's JSON field or a payload may nest
    # arrays and objects (deeper: 422, checked before parsing, so it never costs a recursion).
    max_json_depth: int = Field(default=64, ge=2, le=200)

    # Issue 11, history never stalls: journal entries SQL refused are set aside (a Redis stream,
    # see jobs/history/set_aside.py) and kept up to this many, the oldest dropped first.
    journal_set_aside_max: int = Field(default=10_000, ge=1)

    # --- Connection limits (issue 11: one client must not starve the rest). ---
    # Open SSE streams, long polls and WebSockets one API key may hold in one API process, and
    # all keys together (also bounded by half the open-file limit). Over either: 429 / close 4429.
    max_streams_per_key: int = Field(default=32, ge=1, le=100_000)
    max_streams_per_process: int = Field(default=1000, ge=1, le=1_000_000)
    # The Retry-After (seconds) sent with a refusal.
    stream_retry_after: int = Field(default=5, ge=1, le=3600)
    # How often (seconds) the keys of open streams are checked against revocation.
    stream_key_recheck: float = Field(default=10.0, ge=0.5, le=20)
    # Seconds a connection may take to send a request's line and headers, from its first byte
    # (or from connecting); past it the server closes the connection.
    header_timeout: float = Field(default=5.0, gt=0, le=300)

    # --- The worker pool (issue 17: no fork per job). ---
    # Children per `conveyor worker`, each running one job at a time (0: one per CPU core).
    worker_concurrency: int = Field(default=0, ge=0, le=1024)
    # A child makes way for a fresh one after this many jobs, or past this resident memory
    # (MiB), like Celery's max_tasks_per_child / max_memory_per_child (0: never).
    child_max_jobs: int = Field(default=0, ge=0)
    child_max_memory_mb: int = Field(default=0, ge=0)
    # Seconds past a job's timeout after which the pool kills its child, when the job did not
    # stop at its timeout (a task stuck in C code never sees the alarm); RQ's worker waits 60.
    hard_stop_after: float = Field(default=10.0, ge=1, le=3600)

    # --- A fast submit (issue 16). ---
    # PostgreSQL connections each process keeps open (plus as many again opened for a burst and
    # closed after it). The API serves up to 40 requests at once in its thread pool: at 5 kept,
    # a burst of 20 submits opened a new connection for one request in four.
    database_pool_size: int = Field(default=20, ge=1, le=200)

    # --- Tenant limits (issue 13: one tenant must not take the system over; docs/decisions.md). ---
    # Defaults for every tenant; an operator overrides them per tenant (PUT
    # /api/v1/tenants/{tenant}/limits, `conveyor limits set`). 0 means no limit.
    # Submit rate: a token bucket per tenant and one per API key (each job of a batch counts, so
    # the bursts default to the batch cap: a batch of `batch_max_jobs` passes a full bucket; the
    # waiting quota still bounds what a tenant piles up).
    tenant_submits_per_minute: int = Field(default=6000, ge=0, le=1_000_000)
    tenant_submit_burst: int = Field(default=10_000, ge=1, le=1_000_000)
    key_submits_per_minute: int = Field(default=3000, ge=0, le=1_000_000)
    key_submit_burst: int = Field(default=10_000, ge=1, le=1_000_000)
    # Jobs a tenant may have waiting (queued, scheduled, deferred); over it a submit is 429.
    tenant_max_waiting: int = Field(default=10_000, ge=0, le=100_000_000)
    # Jobs a tenant may have running at once across all workers (enforced by the scheduler).
    tenant_max_running: int = Field(default=0, ge=0, le=1_000_000)
    # The longest `timeout` (seconds) a submission may ask for.
    max_timeout_seconds: int = Field(default=3600, ge=1, le=7 * 86400)
    # Per-task caps, by task name, over what `@task(max_timeout=..., max_running=...)` declares:
    # {"long_task": {"max_timeout_seconds": 600, "max_running": 2}}.
    task_limits: dict[str, dict[str, int]] = Field(default_factory=dict)
    # How long an API process keeps a tenant's limits before asking Redis (and Redis, SQL) again.
    limits_cache_seconds: float = Field(default=5.0, ge=0, le=300)

    # --- Job logs (issue 14). ---
    # What one job's log may hold, over all its attempts; past either cap the log says so once.
    job_log_max_lines: int = Field(default=10_000, ge=2, le=1_000_000)
    job_log_max_bytes: int = Field(default=4 * 1_048_576, ge=1024, le=256 * 1_048_576)
    # Characters of one line's message kept; a longer one is cut and marked.
    job_log_max_line: int = Field(default=4000, ge=80, le=1_000_000)
    # Also capture what a task prints (stdout and stderr), line by line, as level PRINT.
    job_log_capture_print: bool = False
    # Seconds the worker gathers a job's lines before one write to Redis.
    job_log_flush_interval: float = Field(default=0.1, ge=0.01, le=10)
    # Pages (job page, jobs table) receive their updates over one SSE stream each where streams
    # are served (not under AWS Lambda, where they poll); off: they poll everywhere.
    web_push: bool = True

    @field_validator("task_limits")
    @classmethod
    def _known_task_caps(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for task, caps in value.items():
            unknown = set(caps) - set(TASK_CAPS)
            if unknown:
                raise ValueError(
                    f"task_limits[{task!r}]: unknown caps {sorted(unknown)}; use {list(TASK_CAPS)}"
                )
            if any(not 0 <= n <= TASK_CAPS[name] for name, n in caps.items()):
                raise ValueError(f"task_limits[{task!r}]: each cap is 0 (none) up to {TASK_CAPS}")
        return value

    # --- Async tasks (issue 17: `async def` tasks run side by side inside a child). ---
    # How many async jobs one child runs at once on its event loop.
    async_concurrency: int = Field(default=32, ge=1, le=10_000)
    # Seconds an async job has to end after a forced stop cancelled it (asyncio cancellation)
    # before the pool kills its child, and with it every job that child still runs.
    async_stop_grace: float = Field(default=3.0, ge=0.1, le=600)

    # --- Webhooks (issue 15, jobs/webhooks/). ---
    # Host names or networks (CIDR) a webhook may point at although they are private, loopback or
    # link-local (JSON list): for tests and for deployments whose receivers live on such networks.
    webhook_allowed_hosts: list[str] = []
    # Seconds one attempt may take (connect, send, read the bounded answer).
    webhook_timeout: float = Field(default=10.0, gt=0, le=120)
    # Retries: the first after about this many seconds, doubling (with jitter) up to the maximum,
    # for at most `webhook_retry_for` seconds from the event (or a re-send); then it is failed.
    webhook_retry_base: float = Field(default=5.0, gt=0)
    webhook_retry_max_delay: float = Field(default=3600.0, gt=0)
    webhook_retry_for: float = Field(default=3 * 86400.0, gt=0)
    # Deliveries in flight to one endpoint at once, across every sender (1-2 keeps order roughly).
    webhook_per_endpoint: int = Field(default=2, ge=1, le=8)
    # Threads sending in each worker's recorder process (0: this process sends none), and how
    # often it looks for deliveries that are due.
    webhook_senders: int = Field(default=8, ge=0, le=256)
    webhook_poll_interval: float = Field(default=0.5, gt=0, le=60)
    # The shortest interval (seconds) an endpoint may ask between a job's `job.progress` deliveries.
    webhook_progress_min_interval: float = Field(default=1.0, gt=0)

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _allowed_hosts_are_names_or_networks(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            if "/" in entry:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"CONVEYOR_WEBHOOK_ALLOWED_HOSTS: {entry!r} is not a network") from None
            elif not entry or any(c in entry for c in " :@?#"):
                raise ValueError(f"CONVEYOR_WEBHOOK_ALLOWED_HOSTS: {entry!r} is not a host name or address")
        return [entry.lower().rstrip(".") for entry in entries]

    # --- Batches (issue 16). ---
    # Jobs one `POST /api/v1/batches` may hold; past it the request is refused (413).
    batch_max_jobs: int = Field(default=10_000, ge=1, le=1_000_000)
    # The request body a batch may have (its own cap: a batch is many submits in one body).
    batch_max_body_bytes: int = Field(default=32 * 1_048_576, ge=1024)
    # Seconds between two recomputations of a watched batch's snapshot: the changes of its
    # jobs in between are coalesced into one message per watcher.
    batch_live_interval: float = Field(default=0.1, ge=0.01, le=10)

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if not self.secret_key:
            if self.environment == "production":
                raise ValueError(f"CONVEYOR_SECRET_KEY is not set; production needs one ({SECRET_HOW_TO})")
            self.secret_key = (
                _PROCESS_SECRET if self.environment == "test" else stored_dev_secret(self.data_dir)
            )
        problem = secret_problem(self.secret_key)
        if problem is not None:
            message = f"CONVEYOR_SECRET_KEY {problem}; {SECRET_HOW_TO}"
            if self.environment == "production" or self.secret_key == DEFAULT_SECRET:
                raise ValueError(message)
            log.warning(message)
        if self.default_queue not in self.queues:
            self.queues = [*self.queues, self.default_queue]
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver made explicit (and the password, if given apart)."""
        url = sqlalchemy_url(self.database_url or f"sqlite:///{self.data_dir / 'conveyor.db'}")
        return with_password(url, self.database_password) if self.database_password else url


_PROCESS_SECRET = secrets.token_urlsafe(48)


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` cannot sign sessions, or None.

    Length alone is not enough: `aaaa…` or a word repeated passes a length check,
    so a secret must also use a spread of characters (random text of 32+ characters,
    hex or base64, always does).
    """
    if secret == DEFAULT_SECRET:
        return "is the old published default"
    if len(secret) < SECRET_MIN_LENGTH:
        return f"is {len(secret)} characters; it must be at least {SECRET_MIN_LENGTH} random characters"
    if len(set(secret)) < 10 or len(set(secret)) * 3 < len(secret) // 4:
        return "does not look random (too few distinct characters)"
    return None


def create_private_file(path: Path, text: str) -> None:
    """Write ``path`` readable by its owner alone (0600) from the first byte, never briefly wider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def ensure_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (SQLite then keeps that mode,
    and gives its -wal/-shm files the same)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def stored_dev_secret(data_dir: Path) -> str:
    """The development secret kept in the data directory, made (random, 0600) on first use.

    Kept rather than drawn per run so web sessions survive a restart of `conveyor dev`.
    """
    path = data_dir / SECRET_FILE
    if path.exists():
        value = path.read_text().strip()
        if value and secret_problem(value) is None:
            return value
    value = secrets.token_urlsafe(48)
    create_private_file(path, value + "\n")
    return value


def with_password(url: str, password: str) -> str:
    """``url`` with its password set (quoted), for deployments that inject the password as a secret."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    user = parts.username or ""
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def sqlalchemy_url(url: str) -> str:
    """``url`` with PostgreSQL URLs pointed at the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear the cache to reconfigure)."""
    return Settings()
