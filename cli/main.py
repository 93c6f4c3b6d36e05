"""`conveyor`: one command for every job a developer or operator has.

Every subcommand runs without prompts, so scripts and CI can drive it;
errors go to stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


def _fail(message: str, code: int = 1) -> int:
    print(f"conveyor: {message}", file=sys.stderr)
    return code


# --- server-side commands -----------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    from cli.dev import run_dev

    return run_dev(host=args.host, port=args.port)


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.server import uvicorn_options
    from jobs.process_limits import raise_fd_limit

    raise_fd_limit()  # before uvicorn starts: its worker processes inherit the limit
    uvicorn.run("api.main:app", host=args.host, port=args.port, workers=args.workers, **uvicorn_options())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.main import run_worker

    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    run_worker(queues, burst=args.burst, simple=args.simple, name=args.name, recorder=not args.no_recorder)
    return 0


def cmd_recorder(args: argparse.Namespace) -> int:
    from worker.main import run_recorder

    run_recorder(args.name)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    import time

    from jobs.db import open_session
    from jobs.reconciler import Reconciler
    from jobs.redis_conn import get_redis
    from jobs.tasks import load_tasks

    load_tasks()
    reconciler = Reconciler(get_redis(), sessions=open_session, name=args.name)
    while True:
        report = reconciler.run_pass(sweep=True if args.every is None else None)
        print(json.dumps(report.as_dict()), flush=True)
        if args.every is None:
            return 0
        time.sleep(args.every)


def cmd_migrate(args: argparse.Namespace) -> int:
    from jobs.migrate import upgrade

    upgrade(revision=args.revision)
    print(f"database migrated to {args.revision}")
    return 0


def cmd_journal_replay(args: argparse.Namespace) -> int:
    """Move the journal entries the recorder set aside back into the journal (after a fix)."""
    from jobs.redis_conn import get_redis
    from jobs.set_aside import replay

    print(f"{replay(get_redis())} set-aside journal entries put back into the journal")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 when the database and Redis answer (container health checks use this)."""
    from api.routes.health import check_dependencies

    checks = check_dependencies()
    for name, state in checks.items():
        print(f"{name}: {state}")
    return 0 if all(state == "ok" for state in checks.values()) else 1


def cmd_keys_create(args: argparse.Namespace) -> int:
    from jobs.auth import create_key
    from jobs.db import session_scope
    from jobs.errors import ConveyorError

    try:
        with session_scope() as session:
            row, plaintext = create_key(session, tenant=args.tenant, role=args.role, name=args.name or "")
    except ConveyorError as exc:
        return _fail(exc.message, EXIT_USAGE)
    print(f"created {row.role} key {row.id} for tenant {row.tenant!r}; it is shown once:", file=sys.stderr)
    print(plaintext)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from jobs.auth import revoke_key
    from jobs.db import session_scope

    with session_scope() as session:
        if not revoke_key(session, key_id=args.key_id):
            return _fail(f"no key with id {args.key_id!r}")
    print(f"revoked key {args.key_id}")
    return 0


def _duration(text: str) -> Any:
    from jobs.clock import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_prune(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from jobs.redis_conn import get_redis
    from jobs.retention import prune
    from jobs.settings import get_settings

    settings = get_settings()
    older_than = args.older_than or timedelta(days=settings.retention_days)
    compact = args.compact_events_older_than
    if compact is None and settings.event_compact_days:
        compact = timedelta(days=settings.event_compact_days)
    if older_than < timedelta(hours=1):
        return _fail("--older-than must be at least 1h (this deletes history)", EXIT_USAGE)
    if args.batch_size < 1:
        return _fail("--batch-size must be at least 1", EXIT_USAGE)
    client = None
    if not args.dry_run and settings.redis_url:
        client = get_redis()
    report = prune(
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
        f"({report.events} events, {report.results} stored results){events_note}; "
        f"{report.batches} batches in {report.seconds:.2f}s, longest {report.longest_batch_s * 1000:.0f} ms"
    )
    return 0


# --- client-side commands (over HTTP) -----------------------------------------------------------


def default_api_key() -> str | None:
    """CONVEYOR_API_KEY, else the key `conveyor dev` saved for this checkout."""
    key = os.environ.get("CONVEYOR_API_KEY")
    if key:
        return key
    from cli.dev import dev_key_path

    path = dev_key_path()
    return path.read_text().strip() if path.exists() else None


def _client(args: argparse.Namespace) -> Any:
    from conveyor_client import Client

    key = args.key or default_api_key()
    if not key:
        raise SystemExit(
            _fail("no API key: pass --key, set CONVEYOR_API_KEY, or run `conveyor dev` first", EXIT_USAGE)
        )
    return Client(args.url, key)


def _parse_payload(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if args.payload:
        text = Path(args.payload[1:]).read_text() if args.payload.startswith("@") else args.payload
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SystemExit(_fail(f"--payload is not valid JSON: {exc}", EXIT_USAGE)) from None
        if not isinstance(payload, dict):
            raise SystemExit(_fail("--payload must be a JSON object", EXIT_USAGE))
    for item in args.param or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(_fail(f"-p expects name=value, got {item!r}", EXIT_USAGE))
        try:
            payload[name] = json.loads(value)
        except json.JSONDecodeError:
            payload[name] = value
    return payload


def _print_snapshot(snap: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(snap.raw, indent=2))
        return
    progress = "" if snap.progress is None else f" {snap.progress:.0f}%"
    print(f"{snap.job_id}  {snap.task}  {snap.status}{progress}  {snap.message or ''}".rstrip())
    if snap.error:
        print(f"  error: {snap.error['type']}: {snap.error['detail']}")
    if snap.status == "finished":
        print(f"  result: {json.dumps(snap.result)}")


def _api_call(fn: Callable[[], int]) -> int:
    import httpx

    from conveyor_client import ConveyorAPIError

    try:
        return fn()
    except ConveyorAPIError as exc:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return _fail(f"the API answered {exc.status_code}: {detail}")
    except httpx.HTTPError as exc:
        return _fail(f"could not reach the API: {exc}")


def _channels(args: argparse.Namespace) -> list[str] | None:
    return [args.via] if getattr(args, "via", None) else None


def _follow_and_report(client: Any, job_id: str, args: argparse.Namespace) -> int:
    """Follow a job to its end (bar on stderr, or JSON lines), print it, exit 0/1/2 (3: timeout)."""
    from cli.watch import exit_code, follow, timed_out

    try:
        snap = follow(
            client,
            job_id,
            timeout=args.timeout,
            as_json=args.json and args.command == "watch",
            channels=_channels(args),
        )
    except TimeoutError as exc:
        return timed_out(str(exc))
    if args.command == "watch" and args.json:
        return exit_code(snap)
    _print_snapshot(snap, args.json)
    return exit_code(snap)


def cmd_submit(args: argparse.Namespace) -> int:
    payload = _parse_payload(args)

    def run() -> int:
        with _client(args) as client:
            snap = client.submit(
                args.task,
                payload,
                queue=args.queue,
                idempotency_key=args.idempotency_key,
                run_at=args.run_at,
                delay=args.delay,
                depends_on=args.depends_on,
            )
            if not args.wait:
                _print_snapshot(snap, args.json)
                return 0
            if args.json:  # scripts: no bar, just the final snapshot
                from cli.watch import exit_code, timed_out

                try:
                    via = {"channels": _channels(args)} if args.via else {}
                    snap = client.wait(snap.job_id, timeout=args.timeout, **via)
                except TimeoutError as exc:
                    return timed_out(str(exc))
                _print_snapshot(snap, True)
                return exit_code(snap)
            print(f"submitted {snap.job_id}", file=sys.stderr)
            return _follow_and_report(client, snap.job_id, args)

    return _api_call(run)


def cmd_watch(args: argparse.Namespace) -> int:
    def run() -> int:
        with _client(args) as client:
            return _follow_and_report(client, args.job_id, args)

    return _api_call(run)


def cmd_status(args: argparse.Namespace) -> int:
    def run() -> int:
        with _client(args) as client:
            _print_snapshot(client.get(args.job_id), args.json)
        return 0

    return _api_call(run)


def cmd_control(args: argparse.Namespace) -> int:
    """cancel, pause, resume, restart: print the job as the API answered; --wait for its end."""

    def run() -> int:
        with _client(args) as client:
            action = getattr(client, args.command)
            reason = getattr(args, "reason", None)
            snap = action(args.job_id, reason=reason) if reason else action(args.job_id)
            wait = getattr(args, "wait", False)
            if wait:
                snap = client.wait(snap.job_id, timeout=args.timeout)
            _print_snapshot(snap, args.json)
        return {"failed": 1, "canceled": 2}.get(snap.status, 0) if wait else 0

    return _api_call(run)


# --- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_process_commands(sub)
    _add_admin_commands(sub)
    _add_client_commands(sub)
    return parser


Commands = argparse._SubParsersAction  # what add_subparsers returns (argparse names it privately)


def _add_process_commands(sub: Commands) -> None:
    """The processes a deployment runs (API, worker, recorder, reconciler) and their upkeep."""
    p = sub.add_parser("dev", help="run API + worker on embedded defaults (SQLite, embedded Redis)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("api", help="serve the API (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run an RQ worker with the recorder")
    p.add_argument("--queues", help="comma-separated queue names (default: CONVEYOR_QUEUES)")
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.add_argument("--simple", action="store_true", help="run jobs in-process (no fork; trusted, fast jobs)")
    p.add_argument("--name", help="worker name (default: host.random)")
    p.add_argument(
        "--no-recorder",
        action="store_true",
        help="do not start a recorder (run `conveyor recorder` elsewhere)",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("recorder", help="replay the live journal into SQL (the worker starts one itself)")
    p.add_argument("--name", help="consumer name (default: host.random.recorder)")
    p.set_defaults(func=cmd_recorder)

    p = sub.add_parser("reconcile", help="one reconciler pass (for a scheduled job); prints what it did")
    p.add_argument("--every", type=float, metavar="SECONDS", help="keep running, one pass every SECONDS")
    p.add_argument("--name", default="cli", help="name shown in the job history")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("migrate", help="apply database migrations")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("prune", help="delete old ended jobs and compact old progress events, in batches")
    p.add_argument(
        "--older-than",
        type=_duration,
        help="delete jobs that ended longer ago than this, e.g. 90d (default: CONVEYOR_RETENTION_DAYS)",
    )
    p.add_argument(
        "--compact-events-older-than",
        type=_duration,
        help="delete progress events older than this, e.g. 30d (default: CONVEYOR_EVENT_COMPACT_DAYS)",
    )
    p.add_argument("--batch-size", type=int, default=1000, help="rows per transaction (default 1000)")
    p.add_argument("--pause", type=float, default=0.0, help="seconds to sleep between batches")
    p.add_argument("--dry-run", action="store_true", help="count what would be deleted; change nothing")
    p.set_defaults(func=cmd_prune)
    p = sub.add_parser("check", help="exit 0 if the database and Redis answer (for health checks)")
    p.set_defaults(func=cmd_check)


def _add_admin_commands(sub: Commands) -> None:
    """Direct access to the journal and the keys table: run where the database is."""
    journal = sub.add_parser("journal", help="the journal's set-aside entries").add_subparsers(
        dest="journal_command", required=True
    )
    p = journal.add_parser("replay", help="put entries SQL refused back into the journal, after a fix")
    p.set_defaults(func=cmd_journal_replay)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", help="create a key; prints it alone on the last line")
    p.add_argument("--tenant", required=True)
    p.add_argument("--role", required=True, choices=["member", "admin", "operator"])
    p.add_argument("--name")
    p.set_defaults(func=cmd_keys_create)
    p = keys.add_parser("revoke", help="revoke a key by its id")
    p.add_argument("key_id")
    p.set_defaults(func=cmd_keys_revoke)


def _client_options(p: argparse.ArgumentParser) -> None:
    """Where the API is and which key to use: every command that talks to it over HTTP."""
    p.add_argument("--url", default=os.environ.get("CONVEYOR_URL", "http://127.0.0.1:8000"))
    p.add_argument("--key", help="API key (default: CONVEYOR_API_KEY, then the dev key)")
    p.add_argument("--json", action="store_true", help="print the raw snapshot")


def _watch_options(p: argparse.ArgumentParser) -> None:
    """How to follow a job until it ends (submit --wait and watch)."""
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds (exit 3)")
    p.add_argument(
        "--via",
        choices=["sse", "long_poll", "poll"],
        help="follow over this channel only (default: SSE, falling back to long poll, then polling)",
    )


def _add_client_commands(sub: Commands) -> None:
    """Commands that talk to a running API over HTTP, as any client would."""
    p = sub.add_parser("submit", help="submit a job")
    p.add_argument("task")
    p.add_argument("--payload", help="JSON object, or @file.json")
    p.add_argument("-p", "--param", action="append", help="payload field name=value (repeatable)")
    p.add_argument("--queue")
    p.add_argument("--idempotency-key")
    p.add_argument("--delay", type=float, help="run after this many seconds")
    p.add_argument("--run-at", help="run at this ISO 8601 time (with a timezone)")
    p.add_argument("--depends-on", action="append", help="a job id that must finish first (repeatable)")
    p.add_argument(
        "--wait", action="store_true", help="follow the job with a progress bar until it ends; exit 0/1/2"
    )
    _watch_options(p)
    _client_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "watch",
        help="follow a job live (progress bar, message, ETA); exit 0 finished, 1 failed, 2 canceled",
        description="Follow a job until it ends. The bar is drawn on stderr; --json prints every "
        "snapshot as a JSON line instead. Exit 0 finished, 1 failed, 2 canceled, 3 timed out.",
    )
    p.add_argument("job_id")
    _watch_options(p)
    _client_options(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", help="show a job's status")
    p.add_argument("job_id")
    _client_options(p)
    p.set_defaults(func=cmd_status)

    for action, text in (
        ("cancel", "cancel a job (a running one is asked to stop, then stopped by force)"),
        ("pause", "ask a running job to hold at its next checkpoint"),
        ("resume", "let a paused job continue"),
        ("restart", "run a failed or canceled job again (same id, attempt + 1)"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("job_id")
        if action in ("cancel", "restart"):
            p.add_argument("--reason", help="kept in the job's history")
            p.add_argument("--wait", action="store_true", help="then wait until the job ends")
            p.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
        _client_options(p)
        p.set_defaults(func=cmd_control)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
