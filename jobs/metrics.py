"""Counters and histograms for Prometheus, kept in one Redis hash so every API replica reports the same.

Every accepted state change is journaled exactly once (the Lua gate appends it),
and the recorder counts each journal entry's `started`, retry or terminal change
in the same Redis transaction that acknowledges the entry: jobs ended by queue
and status, retries by queue, and run and wait time histograms by queue, in the
hash ``cv:metrics``. So each change is counted once, off the work-horse's path.
`GET /metrics` reads them back (api/routes/metrics.py); live gauges (jobs by
status, queue depth, workers) are read at scrape time. Counters are monotonic
until Redis loses data, which Prometheus's `rate()` treats as a counter reset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobs.clock import parse_iso
from jobs.status import JobStatus

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline


METRICS_KEY = "cv:metrics"

# Upper bounds in seconds, Prometheus style (cumulated when exposed; +Inf is implied).
BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
)  # fmt: skip


def _bucket(seconds: float) -> str:
    for bound in BUCKETS:
        if seconds <= bound:
            return repr(bound)
    return "+Inf"


def observe(pipe: Pipeline, event: str, doc: dict[str, Any]) -> None:
    """Add one accepted change's counts to ``pipe`` (a journal entry's event and snapshot): a start's
    wait, a retry, or an end with its run time. Other changes (progress, most of them) add nothing."""
    status = JobStatus(doc["status"])
    queue = doc["queue"]
    if status == JobStatus.STARTED and event == "started":
        _time(pipe, "wait", queue, doc.get("enqueued_at"), doc.get("started_at"))
    elif event == "retry":
        pipe.hincrby(METRICS_KEY, f"retries|{queue}", 1)
    elif status.is_terminal:
        pipe.hincrby(METRICS_KEY, f"ended|{queue}|{status.value}", 1)
        if status != JobStatus.CANCELED:
            _time(pipe, "run", queue, doc.get("started_at"), doc.get("ended_at"))


def _time(pipe: Pipeline, kind: str, queue: str, since: str | None, until: str | None) -> None:
    """Count one duration in the ``kind`` histogram of ``queue`` (nothing if an end is unknown)."""
    start, end = parse_iso(since), parse_iso(until)
    if start is None or end is None:
        return
    seconds = max(0.0, (end - start).total_seconds())
    pipe.hincrby(METRICS_KEY, f"{kind}|{queue}|{_bucket(seconds)}", 1)
    pipe.hincrby(METRICS_KEY, f"{kind}_count|{queue}", 1)
    pipe.hincrbyfloat(METRICS_KEY, f"{kind}_sum|{queue}", seconds)


@dataclass
class Histogram:
    buckets: dict[str, int] = field(default_factory=dict)  # per-bucket counts, not cumulated
    count: int = 0
    total: float = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        """[(le, cumulative count)] in bucket order, ending with +Inf = count."""
        running = 0
        out: list[tuple[str, float]] = []
        for bound in BUCKETS:
            running += self.buckets.get(repr(bound), 0)
            out.append((repr(bound), float(running)))
        out.append(("+Inf", float(self.count)))
        return out


@dataclass
class Counters:
    ended: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, status) -> n
    retries: dict[str, int] = field(default_factory=dict)
    run: dict[str, Histogram] = field(default_factory=dict)
    wait: dict[str, Histogram] = field(default_factory=dict)
    set_aside: int = 0  # journal entries SQL refused, ever (see jobs/set_aside.py)


def read_counters(client: Redis) -> Counters:
    """Everything :func:`observe` has counted."""
    counters = Counters()
    for raw_name, raw_value in client.hgetall(METRICS_KEY).items():
        name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        value = raw_value.decode() if isinstance(raw_value, bytes) else str(raw_value)
        parts = name.split("|")
        kind = parts[0]
        if name == "set_aside":
            counters.set_aside = int(value)
        elif kind == "ended" and len(parts) == 3:
            counters.ended[(parts[1], parts[2])] = int(value)
        elif kind == "retries" and len(parts) == 2:
            counters.retries[parts[1]] = int(value)
        elif kind in ("run", "wait") and len(parts) == 3:
            getattr(counters, kind).setdefault(parts[1], Histogram()).buckets[parts[2]] = int(value)
        elif kind in ("run_count", "wait_count") and len(parts) == 2:
            getattr(counters, kind[:-6]).setdefault(parts[1], Histogram()).count = int(value)
        elif kind in ("run_sum", "wait_sum") and len(parts) == 2:
            getattr(counters, kind[:-4]).setdefault(parts[1], Histogram()).total = float(value)
    return counters
