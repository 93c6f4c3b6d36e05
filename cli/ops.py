"""`conveyor`'s server-side commands: the processes a deployment runs and their upkeep.

They need SQL, Redis, RQ and the worker, so this module imports them at its top and
`cli.main` imports this module only when one of these commands runs: the client
commands (submit, watch, status, cancel...) start without them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import timedelta

import uvicorn

from api.routes.health import check_dependencies
from api.server import uvicorn_options
from cli.dev import run_dev
from cli.exits import EXIT_USAGE, fail
from jobs.access.auth import create_key, revoke_key
from jobs.errors import ConveyorError
from jobs.history.db import open_session, session_scope
from jobs.history.migrate import upgrade
from jobs.history.retention import prune
from jobs.history.set_aside import replay
from jobs.process_limits import raise_fd_limit
from jobs.queues.reconciler import Reconciler
from jobs.settings import get_settings
from jobs.state.redis_conn import get_redis
from jobs.tasks import load_tasks
from worker.recording import run_recorder


def cmd_dev(args: argparse.Namespace) -> int:
    return run_dev(host=args.host, port=args.port)


def cmd_api(args: argparse.Namespace) -> int:
    raise_fd_limit()  # before uvicorn starts: its worker processes inherit the limit
    uvicorn.run("api.main:app", host=args.host, port=args.port, workers=args.workers, **uvicorn_options())
    return 0


def cmd_recorder(args: argparse.Namespace) -> int:
    run_recorder(args.name)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    load_tasks()
    reconciler = Reconciler(get_redis(), sessions=open_session, name=args.name)
    while True:
        report = reconciler.run_pass(sweep=True if args.every is None else None)
        print(json.dumps(report.as_dict()), flush=True)
        if args.every is None:
            return 0
        time.sleep(args.every)


def cmd_migrate(args: argparse.Namespace) -> int:
    upgrade(revision=args.revision)
    print(f"database migrated to {args.revision}")
    return 0


def cmd_journal_replay(args: argparse.Namespace) -> int:
    """Move the journal entries the recorder set aside back into the journal (after a fix)."""
    print(f"{replay(get_redis())} set-aside journal entries put back into the journal")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 when the database and Redis answer (container health checks use this)."""
    checks = check_dependencies()
    for name, state in checks.items():
        print(f"{name}: {state}")
    return 0 if all(state == "ok" for state in checks.values()) else 1


def cmd_keys_create(args: argparse.Namespace) -> int:
    try:
        with session_scope() as session:
            row, plaintext = create_key(session, tenant=args.tenant, role=args.role, name=args.name or "")
    except ConveyorError as exc:
        return fail(exc.message, EXIT_USAGE)
    print(f"created {row.role} key {row.id} for tenant {row.tenant!r}; it is shown once:", file=sys.stderr)
    print(plaintext)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with session_scope() as session:
        if not revoke_key(session, key_id=args.key_id):
            return fail(f"no key with id {args.key_id!r}")
    print(f"revoked key {args.key_id}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    settings = get_settings()
    older_than = args.older_than or timedelta(days=settings.retention_days)
    compact = args.compact_events_older_than
    if compact is None and settings.event_compact_days:
        compact = timedelta(days=settings.event_compact_days)
    if older_than < timedelta(hours=1):
        return fail("--older-than must be at least 1h (this deletes history)", EXIT_USAGE)
    if args.batch_size < 1:
        return fail("--batch-size must be at least 1", EXIT_USAGE)
    client = None
    if not args.dry_run and settings.redis_url:
        client = get_redis()
    with open_session() as session:
        report = prune(
            session=session,
            older_than=older_than,
            compact_events_older_than=compact or None,
            batch_size=args.batch_size,
            pause=args.pause,
            dry_run=args.dry_run,
            client=client,
        )
    verb = "would delete" if report.dry_run else "deleted"
    events_note = (
        f"; {verb} {report.compacted_events} progress events before {report.events_cutoff:%Y-%m-%d %H:%M}Z"
        if report.events_cutoff
        else ""
    )
    print(
        f"{verb} {report.jobs} jobs that ended before {report.cutoff:%Y-%m-%d %H:%M}Z "
        f"({report.events} events, {report.results} stored results, {report.log_lines} log lines, "
        f"{report.job_batches} emptied batches of jobs){events_note}; "
        f"{report.batches} batches in {report.seconds:.2f}s, longest {report.longest_batch_s * 1000:.0f} ms"
    )
    return 0


# What `cli.main`'s parser names each server-side command (its ``op`` default).
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "dev": cmd_dev,
    "api": cmd_api,
    "recorder": cmd_recorder,
    "reconcile": cmd_reconcile,
    "migrate": cmd_migrate,
    "prune": cmd_prune,
    "check": cmd_check,
    "journal replay": cmd_journal_replay,
    "keys create": cmd_keys_create,
    "keys revoke": cmd_keys_revoke,
}
