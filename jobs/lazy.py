"""The job domain as the API, the pages and the gate's SQL fallback reach it: imported on first
use. The one lazy seam.

A Lambda cold start is import time, and a request that needs no store must not pay for
SQLAlchemy, Redis or RQ (tests/test_cold_start.py). So the modules on the Lambda handler's
import path (`api/`, `web/`) import this module at their top and name what they call through
it, ``lazy.submit_job(session=..., redis=...)``: a module's collaborators show at its top,
and the domain module that holds one is imported the first time it is used (then cached
here, so the lookup costs one dict access after that).

The same holds for `jobs.lifecycle`, which the worker's processes use for every change: it
reaches SQL (re-seeding a job Redis lost, writing a change through) by this seam, so a worker
starts without loading SQLAlchemy. Everything else (`jobs/` itself, the CLI, the recorder)
imports at its top.
Add a name in both places below; tests/test_seams.py checks that they agree.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobs.analytics import Window as Window
    from jobs.analytics import summary as summary
    from jobs.batch_control import cancel_batch as cancel_batch
    from jobs.batch_control import restart_batch as restart_batch
    from jobs.batch_deps import batch_named as batch_named
    from jobs.batch_deps import submit_after_batch as submit_after_batch
    from jobs.batch_state import list_batches as list_batches
    from jobs.batch_state import read_batch as read_batch
    from jobs.batches import JobRequest as JobRequest
    from jobs.batches import submit_batch as submit_batch
    from jobs.control import cancel_job as cancel_job
    from jobs.control import pause_job as pause_job
    from jobs.control import restart_job as restart_job
    from jobs.control import resume_job as resume_job
    from jobs.db import get_engine as get_engine
    from jobs.db import open_session as open_session
    from jobs.db import session_scope as session_scope
    from jobs.metrics import read_counters as read_counters
    from jobs.queue_stats import queue_stats as queue_stats
    from jobs.redis_conn import get_redis as get_redis
    from jobs.set_aside import held as held
    from jobs.set_aside import listing as listing
    from jobs.store import JournalEntry as JournalEntry
    from jobs.store import apply_journal as apply_journal
    from jobs.store import get_job as get_job
    from jobs.submit import submit_job as submit_job

# Where each name lives (the imports above are what mypy reads; this is what runs).
HOMES: dict[str, str] = {
    "Window": "jobs.analytics",
    "summary": "jobs.analytics",
    "cancel_batch": "jobs.batch_control",
    "batch_named": "jobs.batch_deps",
    "submit_after_batch": "jobs.batch_deps",
    "restart_batch": "jobs.batch_control",
    "list_batches": "jobs.batch_state",
    "read_batch": "jobs.batch_state",
    "JobRequest": "jobs.batches",
    "submit_batch": "jobs.batches",
    "cancel_job": "jobs.control",
    "pause_job": "jobs.control",
    "restart_job": "jobs.control",
    "resume_job": "jobs.control",
    "get_engine": "jobs.db",
    "open_session": "jobs.db",
    "session_scope": "jobs.db",
    "read_counters": "jobs.metrics",
    "queue_stats": "jobs.queue_stats",
    "get_redis": "jobs.redis_conn",
    "held": "jobs.set_aside",
    "listing": "jobs.set_aside",
    "JournalEntry": "jobs.store",
    "apply_journal": "jobs.store",
    "get_job": "jobs.store",
    "submit_job": "jobs.submit",
}


def __getattr__(name: str) -> Any:
    """Import the module that holds ``name`` (PEP 562), once: the value is kept as a global."""
    home = HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
