"""Operators' questions answered without SQL: queue stats (seed 002) and the analytics summary (seed 003)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentPrincipal, RedisDep, SessionDep, TenantParam, tenant_scope
from jobs import lazy
from jobs.clock import parse_duration, utcnow
from jobs.errors import InvalidRequest
from jobs.reporting.reports import AnalyticsSummary, QueueStatsReport
from jobs.settings import get_settings

# The SQL and Redis layers load inside the routes that use them (Lambda cold start).

router = APIRouter(prefix="/api/v1", tags=["insights"])

DEFAULT_DAYS = 7
# Dates outside these are typos (and near years 1 and 9999, date arithmetic overflows).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def parse_instant(name: str, text: str) -> datetime:
    """An ISO 8601 date or date-time (UTC when it names no zone); 422 with a message otherwise."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"`{name}` must be an ISO 8601 date or date-time, like 2026-01-31 or 2026-01-31T12:00:00Z; "
            f"got {text!r}."
        ) from None
    out_of_range = InvalidRequest(
        f"`{name}` must be between {EARLIEST.date()} and {LATEST.date()}; got {text!r}."
    )
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise out_of_range from None
    if not EARLIEST <= value <= LATEST:
        raise out_of_range
    return value


@router.get("/queue/stats", response_model=QueueStatsReport)
def get_queue_stats(
    principal: CurrentPrincipal,
    session: SessionDep,
    redis: RedisDep,
    tenant: TenantParam = None,
    window: Annotated[
        str | None,
        Query(max_length=16, description="How far back ended jobs count: 1h, 24h, 7d… (default 24h)."),
    ] = None,
) -> QueueStatsReport:
    """Counts per queue and in total, workers and what each runs, the oldest wait, and a health
    verdict with its reasons. Admins also get RQ's own (tenant-blind) queue depth."""
    scope = tenant_scope(principal, tenant)
    span = None
    if window is not None:
        try:
            span = parse_duration(window)
        except ValueError as exc:
            span = None
            problem = f"{exc}; "
        else:
            problem = ""
        bound = get_settings().analytics_max_days
        if span is None or not timedelta(minutes=1) <= span <= timedelta(days=bound):
            raise InvalidRequest(
                f"`window`: {problem}it must be between 1m and {bound}d "
                f"(CONVEYOR_ANALYTICS_MAX_DAYS); got {window!r}."
            )
    return lazy.queue_stats(session, redis, tenant=scope, window=span, include_rq=principal.is_admin)


@router.get("/analytics/summary", response_model=AnalyticsSummary, response_model_by_alias=True)
def get_analytics_summary(
    principal: CurrentPrincipal,
    session: SessionDep,
    from_: Annotated[
        str | None, Query(alias="from", max_length=40, description="Start, inclusive (default: to - 7 days).")
    ] = None,
    to: Annotated[str | None, Query(max_length=40, description="End, exclusive (default: now).")] = None,
    queue: Annotated[str | None, Query(max_length=64)] = None,
    task: Annotated[str | None, Query(max_length=100)] = None,
    tenant: TenantParam = None,
) -> AnalyticsSummary:
    """Success rate, counts, throughput per day, p50/p95/p99 run and wait times (overall, per queue,
    per task), retry rate and the top error signatures of the jobs that ended in [from, to)."""
    scope = tenant_scope(principal, tenant)
    end = parse_instant("to", to) if to else utcnow()
    start = parse_instant("from", from_) if from_ else end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise InvalidRequest(f"`from` ({start.isoformat()}) must be before `to` ({end.isoformat()}).")
    limit = get_settings().analytics_max_days
    if end - start > timedelta(days=limit):
        raise InvalidRequest(
            f"The range is {(end - start).days} days; at most {limit} (CONVEYOR_ANALYTICS_MAX_DAYS)."
        )
    return lazy.summary(session, lazy.Window(start=start, end=end, tenant=scope, queue=queue, task=task))
