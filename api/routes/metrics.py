"""GET /metrics: Prometheus exposition (see docs/metrics.md for every series).

prometheus_client is imported inside the route, not at module import, to keep
the Lambda cold start (which imports the app) free of it; the job domain comes
through `jobs.lazy` for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from api.deps import bearer, current_principal
from jobs import lazy
from jobs.settings import get_settings
from jobs.status import LIVE

router = APIRouter(tags=["metrics"])

WORKER_STATES = ("busy", "idle", "suspended", "started")


async def metrics_access(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """An admin key, unless CONVEYOR_METRICS_PUBLIC opens the endpoint to any caller."""
    if get_settings().metrics_public:
        return
    principal = await current_principal(request, credentials)
    if not principal.is_admin:
        raise HTTPException(status_code=403, detail="GET /metrics needs an admin key.")


def _families() -> list[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    client = lazy.get_redis()
    with lazy.open_session() as session:  # run in the thread pool (get_metrics)
        report = lazy.queue_stats(session, client, tenant=None, include_rq=True)
    counters = lazy.read_counters(client)

    jobs = GaugeMetricFamily(
        "conveyor_jobs", "Jobs in each live status, every tenant (from SQL).", labels=["queue", "status"]
    )
    depth = GaugeMetricFamily("conveyor_queue_depth", "Jobs in RQ's queue list.", labels=["queue"])
    oldest = GaugeMetricFamily(
        "conveyor_queue_oldest_waiting_seconds",
        "Age of the oldest job queued and ready to run (0 when none waits).",
        labels=["queue"],
    )
    for q in report.queues:
        for status in sorted(s.value for s in LIVE):
            jobs.add_metric([q.name, status], q.by_status.get(status, 0))
        depth.add_metric([q.name], q.rq.queued if q.rq else 0)
        oldest.add_metric([q.name], q.oldest_waiting_age_s or 0.0)

    workers = GaugeMetricFamily("conveyor_workers", "Registered RQ workers by state.", labels=["state"])
    states = {state: 0 for state in WORKER_STATES}
    for w in report.workers.items:
        states[w.state] = states.get(w.state, 0) + 1
    for state, n in sorted(states.items()):
        workers.add_metric([state], n)

    ended = CounterMetricFamily(
        "conveyor_jobs_ended", "Jobs that reached a terminal status.", labels=["queue", "status"]
    )
    for (queue, status), n in sorted(counters.ended.items()):
        ended.add_metric([queue, status], n)
    retries = CounterMetricFamily(
        "conveyor_job_retries", "Failed attempts that were retried.", labels=["queue"]
    )
    for queue, n in sorted(counters.retries.items()):
        retries.add_metric([queue], n)

    set_aside = CounterMetricFamily(
        "conveyor_journal_set_aside",
        "Journal entries SQL refused, set aside so that history flows on (GET /api/v1/journal/set-aside).",
    )
    set_aside.add_metric([], counters.set_aside)
    held_aside = GaugeMetricFamily(
        "conveyor_journal_set_aside_held",
        "Journal entries held aside now (capped: CONVEYOR_JOURNAL_SET_ASIDE_MAX).",
    )
    held_aside.add_metric([], lazy.held(client))

    histograms = []
    for kind, help_text in (
        ("run", "Run time of finished and failed jobs (started to ended)."),
        ("wait", "Wait from enqueued to started, per attempt."),
    ):
        family = HistogramMetricFamily(f"conveyor_job_{kind}_seconds", help_text, labels=["queue"])
        for queue, histogram in sorted(getattr(counters, kind).items()):
            family.add_metric([queue], histogram.cumulative(), sum_value=histogram.total)
        histograms.append(family)
    return [
        jobs,
        depth,
        oldest,
        workers,
        ended,
        retries,
        set_aside,
        held_aside,
        *histograms,
        *_stream_families(),
        *_limit_families(client),
    ]


def _limit_families(client: Any) -> list[Any]:
    """What each key used against its tenant's limits (issue 13), from Redis: every API process's."""
    from prometheus_client.core import CounterMetricFamily

    from jobs.access.admission import read_usage

    usage = read_usage(client)
    submits = CounterMetricFamily(
        "conveyor_submits",
        "Jobs admitted past the submit rate limit, by tenant and API key id (each job of a batch counts).",
        labels=["tenant", "key"],
    )
    for (tenant, key), n in sorted(usage.submits.items()):
        submits.add_metric([tenant, key], n)
    limited = CounterMetricFamily(
        "conveyor_submits_rate_limited",
        "Submissions refused 429 by a submit rate limit, by tenant and API key id.",
        labels=["tenant", "key"],
    )
    for (tenant, key), n in sorted(usage.rate_limited.items()):
        limited.add_metric([tenant, key], n)
    refused = CounterMetricFamily(
        "conveyor_submits_refused",
        "Submissions refused for a quota (429) or a cap (422), by tenant, API key id and limit.",
        labels=["tenant", "key", "limit"],
    )
    for (tenant, key, limit), n in sorted(usage.refused.items()):
        refused.add_metric([tenant, key, limit], n)
    return [submits, limited, refused]


def _stream_families() -> list[Any]:
    """This API process's streams under their caps (each process has its own: see api/stream_limits.py)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from api.stream_limits import process_cap, stream_slots

    open_streams = GaugeMetricFamily(
        "conveyor_api_open_streams", "SSE streams, long polls and WebSockets this API process holds open."
    )
    open_streams.add_metric([], stream_slots.total)
    cap = GaugeMetricFamily(
        "conveyor_api_stream_cap", "The most streams this API process holds (its per-process cap in force)."
    )
    cap.add_metric([], process_cap())
    refused = CounterMetricFamily(
        "conveyor_api_streams_refused",
        "Streams this API process refused (429 / close 4429), by the cap reached (key or process).",
        labels=["cap"],
    )
    for name, n in sorted(stream_slots.refused.items()):
        refused.add_metric([name], n)
    return [open_streams, cap, refused]


@router.get("/metrics", dependencies=[Depends(metrics_access)], response_class=Response)
async def get_metrics() -> Response:
    """Prometheus text exposition: jobs by status, queue depth, run/wait histograms, workers."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    families = await run_in_threadpool(_families)

    class Collected:
        def collect(self) -> Iterator[Any]:
            yield from families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collected())
    return Response(content=generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
