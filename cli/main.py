"""`conveyor`: one command for every job a developer or operator has.

Every subcommand runs without prompts, so scripts and CI can drive it;
errors go to stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from cli.dev import dev_key_path
from cli.exits import EXIT_USAGE, fail
from cli.watch import batch_counts_text, exit_code, follow, follow_batch, timed_out
from conveyor_client import Client, ConveyorAPIError
from jobs.clock import parse_duration

# --- server-side commands -----------------------------------------------------------------------


def run_server_side(args: argparse.Namespace) -> int:
    """Run a server-side command (`cli.ops`): the CLI's one deferred import.

    Those commands need SQL, Redis, RQ and the worker, about three times the import time of
    the client commands below, which talk HTTP only and should start at once.
    """
    module = importlib.import_module(OP_MODULES.get(args.op, "cli.ops"))
    command: Callable[[argparse.Namespace], int] = module.COMMANDS[args.op]
    return command(args)


# The worker has a module of its own: it must start quickly, and needs none of the rest.
OP_MODULES = {"worker": "cli.worker_op"}


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _duration(text: str) -> Any:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- client-side commands (over HTTP) -----------------------------------------------------------


def default_api_key() -> str | None:
    """CONVEYOR_API_KEY, else the key `conveyor dev` saved for this checkout."""
    key = os.environ.get("CONVEYOR_API_KEY")
    if key:
        return key
    path = dev_key_path()
    return path.read_text().strip() if path.exists() else None


def _client(args: argparse.Namespace) -> Any:
    key = args.key or default_api_key()
    if not key:
        raise SystemExit(
            fail("no API key: pass --key, set CONVEYOR_API_KEY, or run `conveyor dev` first", EXIT_USAGE)
        )
    return Client(args.url, key)


def _parse_payload(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if args.payload:
        text = Path(args.payload[1:]).read_text() if args.payload.startswith("@") else args.payload
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SystemExit(fail(f"--payload is not valid JSON: {exc}", EXIT_USAGE)) from None
        if not isinstance(payload, dict):
            raise SystemExit(fail("--payload must be a JSON object", EXIT_USAGE))
    for item in args.param or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(fail(f"-p expects name=value, got {item!r}", EXIT_USAGE))
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
    try:
        return fn()
    except ConveyorAPIError as exc:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return fail(f"the API answered {exc.status_code}: {detail}")
    except httpx.HTTPError as exc:
        return fail(f"could not reach the API: {exc}")


def _channels(args: argparse.Namespace) -> list[str] | None:
    return [args.via] if getattr(args, "via", None) else None


def _follow_and_report(client: Any, job_id: str, args: argparse.Namespace) -> int:
    """Follow a job to its end (bar on stderr, or JSON lines), print it, exit 0/1/2 (3: timeout)."""
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
    """Follow a job, or a batch (an id no job has is looked up as a batch's)."""

    def run() -> int:
        with _client(args) as client:
            try:
                client.get(args.job_id)
            except ConveyorAPIError as exc:
                if exc.status_code != 404:
                    raise
                client.get_batch(args.job_id)  # 404 here too: the message says no such job
                return _follow_batch_and_report(client, args.job_id, args)
            return _follow_and_report(client, args.job_id, args)

    return _api_call(run)


def _read_jobs_file(path: str) -> list[dict[str, Any]]:
    """The jobs of a JSON Lines file: one JSON object per line (blank lines skipped)."""
    jobs: list[dict[str, Any]] = []
    try:
        lines = (sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")).splitlines()
    except OSError as exc:
        raise SystemExit(fail(f"cannot read {path}: {exc.strerror}", EXIT_USAGE)) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(fail(f"{path}:{number}: not valid JSON: {exc.msg}", EXIT_USAGE)) from None
        if not isinstance(item, dict) or "task" not in item:
            raise SystemExit(
                fail(f"{path}:{number}: each line must be a JSON object with a task", EXIT_USAGE)
            )
        jobs.append(item)
    if not jobs:
        raise SystemExit(fail(f"{path}: no jobs in it", EXIT_USAGE))
    return jobs


def _follow_batch_and_report(client: Any, batch_id: str, args: argparse.Namespace) -> int:
    """Follow a batch to its end with one bar (or JSON lines), print its counts, exit 0/1/2 (3: timeout)."""
    try:
        snap = follow_batch(
            client, batch_id, timeout=args.timeout, as_json=args.json, channels=_channels(args)
        )
    except TimeoutError as exc:
        return timed_out(str(exc))
    if not args.json:
        print(f"{snap.batch_id}  {snap.status}  {batch_counts_text(snap)}")
    return exit_code(snap)


def cmd_submit_batch(args: argparse.Namespace) -> int:
    jobs = _read_jobs_file(args.file)

    def run() -> int:
        with _client(args) as client:
            created = client.submit_batch(
                jobs, name=args.name, tags=args.tag or (), idempotency_key=args.idempotency_key
            )
            if args.json and not args.wait:
                print(json.dumps({"batch_id": created.batch_id, "job_ids": created.job_ids}))
                return 0
            print(f"submitted batch {created.batch_id} ({len(created.job_ids)} jobs)", file=sys.stderr)
            if not args.wait:
                print(created.batch_id)
                return 0
            return _follow_batch_and_report(client, created.batch_id, args)

    return _api_call(run)


def cmd_status(args: argparse.Namespace) -> int:
    def run() -> int:
        with _client(args) as client:
            _print_snapshot(client.get(args.job_id), args.json)
        return 0

    return _api_call(run)


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a job's log (all of it, page by page), or follow it until the job ends."""

    def show(line: Any) -> None:
        print(json.dumps(line.raw) if args.json else str(line), flush=args.follow)

    def run() -> int:
        with _client(args) as client:
            try:
                if args.follow:
                    for line in client.follow_logs(args.job_id, after=args.after, timeout=args.timeout):
                        show(line)
                    return 0
                after: int | None = args.after
                while after is not None:
                    page = client.logs(args.job_id, after=after, limit=1000)
                    for line in page.items:
                        show(line)
                    after = page.next_cursor
            except TimeoutError as exc:
                return timed_out(str(exc))
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


LIMIT_OPTIONS = {
    "submits_per_minute": "jobs the tenant may submit a minute (0: no limit)",
    "submit_burst": "submits the tenant may make at once",
    "key_submits_per_minute": "jobs each of its API keys may submit a minute (0: no limit)",
    "key_submit_burst": "submits each key may make at once",
    "max_waiting": "jobs it may have queued, scheduled or deferred (0: no limit)",
    "max_running": "jobs it may have running at once, over all workers (0: no limit)",
    "max_timeout_seconds": "the longest timeout (seconds) a submission may ask for",
}


def _print_limits(limits: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(limits, indent=2))
        return
    print(f"limits of tenant {limits['tenant']!r}:")
    for name in LIMIT_OPTIONS:
        source = "set for this tenant" if name in limits["overridden"] else "default"
        print(f"  {name:<24} {limits[name]:>10}  ({source})")
    print(f"  {'jobs waiting now':<24} {limits.get('waiting', '?'):>10}")


def cmd_limits(args: argparse.Namespace) -> int:
    """`limits show` and `limits set`: a tenant's limits over the API (set: an operator key)."""
    changes: dict[str, int | None] = {name: None for name in getattr(args, "default", None) or []}
    for name in LIMIT_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if args.limits_command == "set" and not changes:
        return fail("name at least one limit to change (see `conveyor limits set --help`)", EXIT_USAGE)

    def run() -> int:
        with _client(args) as client:
            limits = client.set_limits(args.tenant, **changes) if changes else client.limits(args.tenant)
        _print_limits(limits, args.json)
        return 0

    return _api_call(run)


def cmd_webhooks(args: argparse.Namespace) -> int:
    """webhooks add/list/rm: the API's /api/v1/webhooks; `add` prints the secret (shown once)."""

    def run() -> int:
        with _client(args) as client:
            if args.webhooks_command == "add":
                body: dict[str, Any] = {"url": args.webhook_url, "events": args.event or ["job.finished"]}
                if args.description:
                    body["description"] = args.description
                if args.progress_interval is not None:
                    body["progress_interval"] = args.progress_interval
                if args.tenant:
                    body["tenant"] = args.tenant
                hook = client.request("POST", "/api/v1/webhooks", json=body).json()
                if args.json:
                    print(json.dumps(hook, indent=2))
                else:
                    print(f"{hook['id']}  {hook['url']}  {','.join(hook['events'])}")
                    print("signing secret (shown once):")
                    print(hook["secret"])
            elif args.webhooks_command == "list":
                items = client.request("GET", "/api/v1/webhooks").json()["items"]
                if args.json:
                    print(json.dumps(items, indent=2))
                for hook in [] if args.json else items:
                    print(f"{hook['id']}  {hook['url']}  {','.join(hook['events'])}  {hook['tenant'] or '*'}")
            else:
                client.request("DELETE", f"/api/v1/webhooks/{args.webhook_id}")
                print(f"deleted {args.webhook_id}")
        return 0

    return _api_call(run)


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def cmd_bulk(args: argparse.Namespace) -> int:
    """bulk cancel/restart/delete by filter: counts first; acts only with --yes."""
    from datetime import UTC, datetime

    spec: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("task", "queue", "tag", "error_signature", "error_type", "batch_id")
        if getattr(args, name)
    }
    if args.status:
        spec["status"] = args.status
    if args.since:
        spec["ended_after" if args.action != "cancel" else "created_after"] = (
            datetime.now(UTC) - args.since
        ).isoformat()
    body: dict[str, Any] = {"filter": spec, "dry_run": not args.yes, "limit": args.limit}
    if args.reason:
        body["reason"] = args.reason

    def run() -> int:
        with _client(args) as client:
            answer = client.request("POST", f"/api/v1/jobs/bulk/{args.action}", json=body).json()
        if args.json:
            print(json.dumps(answer, indent=2))
        elif answer["dry_run"]:
            done = {"cancel": "canceled", "restart": "restarted", "delete": "deleted"}[args.action]
            print(f"{answer['matched']} jobs would be {done}; run again with --yes to do it")
        else:
            print(f"{args.action}: {answer['done']} done, {answer['skipped']} skipped of {answer['matched']}")
            for error in answer["errors"]:
                print(f"  {error['job_id']}: {error['detail']}")
        return 0

    return _api_call(run)


# --- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_process_commands(sub)
    _add_admin_commands(sub)
    _add_client_commands(sub)
    _add_limits_commands(sub)
    return parser


Commands = argparse._SubParsersAction  # what add_subparsers returns (argparse names it privately)


def _add_process_commands(sub: Commands) -> None:
    """The processes a deployment runs (API, worker, recorder, reconciler) and their upkeep."""
    p = sub.add_parser("dev", help="run API + worker on embedded defaults (SQLite, embedded Redis)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=run_server_side, op="dev")

    p = sub.add_parser("api", help="serve the API (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=run_server_side, op="api")

    p = sub.add_parser("worker", help="run a pool of RQ workers with the recorder")
    p.add_argument("--queues", help="comma-separated queue names (default: CONVEYOR_QUEUES)")
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.add_argument(
        "--concurrency",
        type=positive_int,
        help="jobs run at once, one per child process "
        "(default: CONVEYOR_WORKER_CONCURRENCY, else one per core)",
    )
    p.add_argument("--name", help="worker name (default: host.random)")
    p.add_argument(
        "--no-recorder",
        action="store_true",
        help="do not start a recorder (run `conveyor recorder` elsewhere)",
    )
    p.set_defaults(func=run_server_side, op="worker")

    p = sub.add_parser("recorder", help="replay the live journal into SQL (the worker starts one itself)")
    p.add_argument("--name", help="consumer name (default: host.random.recorder)")
    p.set_defaults(func=run_server_side, op="recorder")

    p = sub.add_parser("reconcile", help="one reconciler pass (for a scheduled job); prints what it did")
    p.add_argument("--every", type=float, metavar="SECONDS", help="keep running, one pass every SECONDS")
    p.add_argument("--name", default="cli", help="name shown in the job history")
    p.set_defaults(func=run_server_side, op="reconcile")

    p = sub.add_parser("migrate", help="apply database migrations")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=run_server_side, op="migrate")

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
    p.set_defaults(func=run_server_side, op="prune")
    p = sub.add_parser("check", help="exit 0 if the database and Redis answer (for health checks)")
    p.set_defaults(func=run_server_side, op="check")


def _add_admin_commands(sub: Commands) -> None:
    """Direct access to the journal and the keys table: run where the database is."""
    journal = sub.add_parser("journal", help="the journal's set-aside entries").add_subparsers(
        dest="journal_command", required=True
    )
    p = journal.add_parser("replay", help="put entries SQL refused back into the journal, after a fix")
    p.set_defaults(func=run_server_side, op="journal replay")

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", help="create a key; prints it alone on the last line")
    p.add_argument("--tenant", required=True)
    p.add_argument("--role", required=True, choices=["member", "admin", "operator"])
    p.add_argument("--name")
    p.set_defaults(func=run_server_side, op="keys create")
    p = keys.add_parser("revoke", help="revoke a key by its id")
    p.add_argument("key_id")
    p.set_defaults(func=run_server_side, op="keys revoke")


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
    p.add_argument("job_id", help="a job's id, or a batch's (one bar for all its jobs)")
    _watch_options(p)
    _client_options(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser(
        "logs",
        help="print what a job logged; --follow prints lines as they come, until the job ends",
    )
    p.add_argument("job_id")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the job ends")
    p.add_argument("--after", type=int, default=0, help="start after this line's seq")
    p.add_argument("--timeout", type=float, help="with --follow: give up after this many seconds (exit 3)")
    _client_options(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser(
        "submit-batch",
        help="submit many jobs at once from a JSON Lines file (one job object per line)",
        description='Submit every job of FILE (JSON Lines: one {"task": ..., "payload": ...} '
        "per line; - for stdin) as one batch, all or none. --wait follows it with one progress bar "
        "for the whole batch; exit 0 all finished, 1 some failed, 2 canceled, 3 timed out.",
    )
    p.add_argument("file")
    p.add_argument("--name", help="a label shown with the batch")
    p.add_argument("--tag", action="append", help="a tag for every job of the batch (repeatable)")
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="follow the batch with one progress bar until it ends")
    _watch_options(p)
    _client_options(p)
    p.set_defaults(func=cmd_submit_batch)

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

    p = sub.add_parser(
        "bulk",
        help="cancel, restart or delete every job a filter matches (a dry-run count unless --yes)",
    )
    p.add_argument("action", choices=["cancel", "restart", "delete"])
    p.add_argument("--task")
    p.add_argument("--queue")
    p.add_argument("--status", action="append", help="narrow to these statuses (repeatable)")
    p.add_argument("--tag")
    p.add_argument("--error-signature")
    p.add_argument("--error-type")
    p.add_argument("--batch-id")
    p.add_argument(
        "--since", type=_duration, help="only jobs that ended (cancel: were created) within 1h, 7d…"
    )
    p.add_argument("--limit", type=positive_int, default=1000, help="at most this many jobs (default 1000)")
    p.add_argument("--reason", help="kept in each job's history")
    p.add_argument("--yes", action="store_true", help="act; without it, only count")
    _client_options(p)
    p.set_defaults(func=cmd_bulk)

    hooks = sub.add_parser("webhooks", help="manage webhook endpoints (admin key)").add_subparsers(
        dest="webhooks_command", required=True
    )
    p = hooks.add_parser("add", help="register an endpoint; prints its signing secret once")
    p.add_argument("webhook_url", metavar="URL")
    p.add_argument(
        "--event",
        action="append",
        choices=["job.finished", "job.failed", "job.canceled", "job.progress", "batch.completed"],
        help="an event to deliver (repeatable; default job.finished)",
    )
    p.add_argument("--description")
    p.add_argument("--progress-interval", type=float, help="seconds between a job's job.progress deliveries")
    p.add_argument("--tenant", help="operators: a tenant's name, or * for every tenant")
    _client_options(p)
    p.set_defaults(func=cmd_webhooks)
    p = hooks.add_parser("list", help="list the endpoints this key manages")
    _client_options(p)
    p.set_defaults(func=cmd_webhooks)
    p = hooks.add_parser("rm", help="delete an endpoint (and its deliveries)")
    p.add_argument("webhook_id")
    _client_options(p)
    p.set_defaults(func=cmd_webhooks)


def _add_limits_commands(sub: Commands) -> None:
    """A tenant's rate limits, quotas and caps, over the API (reading: an admin or operator key)."""
    limits = sub.add_parser("limits", help="show or set a tenant's limits").add_subparsers(
        dest="limits_command", required=True
    )
    p = limits.add_parser("show", help="a tenant's limits in force, and which are its own")
    p.add_argument("tenant")
    _client_options(p)
    p.set_defaults(func=cmd_limits)
    p = limits.add_parser("set", help="change a tenant's limits (an operator key); prints them all")
    p.add_argument("tenant")
    for name, text in LIMIT_OPTIONS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}", dest=name, type=non_negative_int, metavar="N", help=text
        )
    p.add_argument(
        "--default",
        action="append",
        choices=list(LIMIT_OPTIONS),
        metavar="LIMIT",
        help="put this limit back to the setting's default (repeatable)",
    )
    _client_options(p)
    p.set_defaults(func=cmd_limits)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
