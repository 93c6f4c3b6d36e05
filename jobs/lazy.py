"""The job domain as the API, the pages and the gate's SQL fallback reach it: imported on first
use. The one lazy seam.

A Lambda cold start is import time, and a request that needs no store must not pay for
SQLAlchemy, Redis or RQ (tests/test_cold_start.py). So the modules on the Lambda handler's
import path (`api/`, `web/`) import this module at their top and name what they call through
it, ``lazy.submit_job(session=..., redis=...)``: a module's collaborators show at its top,
and the domain module that holds one is imported the first time it is used (then cached
here, so the lookup costs one dict access after that).

The same holds for `jobs.state.lifecycle`, which the worker's processes use for every change: it
reaches SQL (re-seeding a job Redis lost, writing a change through) by this seam, so a worker
starts without loading SQLAlchemy. Everything else (`jobs/` itself, the CLI, the recorder)
imports at its top.
Add a name in both places below; tests/test_seams.py checks that they agree.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobs.actions.batch_control import cancel_batch as cancel_batch
    from jobs.actions.batch_control import restart_batch as restart_batch
    from jobs.actions.batch_deps import batch_named as batch_named
    from jobs.actions.batch_deps import submit_after_batch as submit_after_batch
    from jobs.actions.batches import JobRequest as JobRequest
    from jobs.actions.batches import submit_batch as submit_batch
    from jobs.actions.control import cancel_job as cancel_job
    from jobs.actions.control import pause_job as pause_job
    from jobs.actions.control import restart_job as restart_job
    from jobs.actions.control import resume_job as resume_job
    from jobs.actions.submit import submit_job as submit_job
    from jobs.history.db import get_engine as get_engine
    from jobs.history.db import open_session as open_session
    from jobs.history.db import session_scope as session_scope
    from jobs.history.set_aside import held as held
    from jobs.history.set_aside import listing as listing
    from jobs.history.store import JournalEntry as JournalEntry
    from jobs.history.store import apply_journal as apply_journal
    from jobs.history.store import get_job as get_job
    from jobs.reporting.analytics import Window as Window
    from jobs.reporting.analytics import summary as summary
    from jobs.reporting.metrics import read_counters as read_counters
    from jobs.reporting.queue_stats import queue_stats as queue_stats
    from jobs.state.batch_state import list_batches as list_batches
    from jobs.state.batch_state import read_batch as read_batch
    from jobs.state.redis_conn import get_redis as get_redis

# Where each name lives (the imports above are what mypy reads; this is what runs).
HOMES: dict[str, str] = {
    "Window": "jobs.reporting.analytics",
    "summary": "jobs.reporting.analytics",
    "cancel_batch": "jobs.actions.batch_control",
    "batch_named": "jobs.actions.batch_deps",
    "submit_after_batch": "jobs.actions.batch_deps",
    "restart_batch": "jobs.actions.batch_control",
    "list_batches": "jobs.state.batch_state",
    "read_batch": "jobs.state.batch_state",
    "JobRequest": "jobs.actions.batches",
    "submit_batch": "jobs.actions.batches",
    "cancel_job": "jobs.actions.control",
    "pause_job": "jobs.actions.control",
    "restart_job": "jobs.actions.control",
    "resume_job": "jobs.actions.control",
    "get_engine": "jobs.history.db",
    "open_session": "jobs.history.db",
    "session_scope": "jobs.history.db",
    "read_counters": "jobs.reporting.metrics",
    "queue_stats": "jobs.reporting.queue_stats",
    "get_redis": "jobs.state.redis_conn",
    "held": "jobs.history.set_aside",
    "listing": "jobs.history.set_aside",
    "JournalEntry": "jobs.history.store",
    "apply_journal": "jobs.history.store",
    "get_job": "jobs.history.store",
    "submit_job": "jobs.actions.submit",
}


def __getattr__(name: str) -> Any:
    """Import the module that holds ``name`` (PEP 562), once: the value is kept as a global."""
    home = HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
