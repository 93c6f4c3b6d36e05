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


class Tally:
    """The counts of a batch of accepted changes, summed here and sent once per distinct field.

    A batch of hundreds of jobs costs a handful of HINCRBY/HINCRBYFLOAT commands, not several
    per job, and they still travel in the transaction that acknowledges the batch's entries.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.sums: dict[str, float] = {}

    def observe(self, event: str, doc: dict[str, Any]) -> None:
        """Count one change (a journal entry's event and snapshot): a start's wait, a retry, or an
        end with its run time. Other changes (progress, most of them) add nothing. An entry that
        cannot be read (KeyError, TypeError, ValueError) adds nothing either."""
        counts: list[str] = []
        sums: list[tuple[str, float]] = []
        status = JobStatus(doc["status"])
        queue = doc["queue"]
        if status == JobStatus.STARTED and event == "started":
            counts, sums = _timed("wait", queue, doc.get("enqueued_at"), doc.get("started_at"))
        elif event == "retry":
            counts = [f"retries|{queue}"]
        elif status.is_terminal:
            counts = [f"ended|{queue}|{status.value}"]
            if status != JobStatus.CANCELED:
                run_counts, sums = _timed("run", queue, doc.get("started_at"), doc.get("ended_at"))
                counts += run_counts
        for name in counts:
            self.counts[name] = self.counts.get(name, 0) + 1
        for name, value in sums:
            self.sums[name] = self.sums.get(name, 0.0) + value

    def send(self, pipe: Pipeline) -> None:
        """Add the tally to ``pipe``: one command per distinct field."""
        for name, count in self.counts.items():
            pipe.hincrby(METRICS_KEY, name, count)
        for name, total in self.sums.items():
            pipe.hincrbyfloat(METRICS_KEY, name, total)


_Fields = tuple[list[str], list[tuple[str, float]]]  # counters to add 1 to, sums to add a value to


def _timed(kind: str, queue: str, since: str | None, until: str | None) -> _Fields:
    """The counters and the sum one duration adds to the ``kind`` histogram of ``queue``
    (nothing if an end is unknown)."""
    start, end = parse_iso(since), parse_iso(until)
    if start is None or end is None:
        return [], []
    seconds = max(0.0, (end - start).total_seconds())
    return [f"{kind}|{queue}|{_bucket(seconds)}", f"{kind}_count|{queue}"], [(f"{kind}_sum|{queue}", seconds)]


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
    set_aside: int = 0  # journal entries SQL refused, ever (see jobs/history/set_aside.py)


def read_counters(client: Redis) -> Counters:
    """Everything :meth:`Tally.observe` has counted."""
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
