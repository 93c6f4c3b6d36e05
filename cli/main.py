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

    from jobs.settings import get_settings

    uvicorn.run(
        "api.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        log_level=get_settings().log_level.lower(),
    )
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


def cmd_migrate(args: argparse.Namespace) -> int:
    from jobs.migrate import upgrade

    upgrade(revision=args.revision)
    print(f"database migrated to {args.revision}")
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


def cmd_submit(args: argparse.Namespace) -> int:
    payload = _parse_payload(args)

    def run() -> int:
        with _client(args) as client:
            snap = client.submit(args.task, payload, queue=args.queue, idempotency_key=args.idempotency_key)
            if args.wait:
                snap = client.wait(snap.job_id, timeout=args.timeout)
            _print_snapshot(snap, args.json)
            return {"failed": 1, "canceled": 2}.get(snap.status, 0) if args.wait else 0

    return _api_call(run)


def cmd_status(args: argparse.Namespace) -> int:
    def run() -> int:
        with _client(args) as client:
            _print_snapshot(client.get(args.job_id), args.json)
        return 0

    return _api_call(run)


# --- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    p = sub.add_parser("migrate", help="apply database migrations")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("check", help="exit 0 if the database and Redis answer (for health checks)")
    p.set_defaults(func=cmd_check)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", help="create a key; prints it alone on the last line")
    p.add_argument("--tenant", required=True)
    p.add_argument("--role", required=True, choices=["admin", "member"])
    p.add_argument("--name")
    p.set_defaults(func=cmd_keys_create)
    p = keys.add_parser("revoke", help="revoke a key by its id")
    p.add_argument("key_id")
    p.set_defaults(func=cmd_keys_revoke)

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get("CONVEYOR_URL", "http://127.0.0.1:8000"))
        p.add_argument("--key", help="API key (default: CONVEYOR_API_KEY, then the dev key)")
        p.add_argument("--json", action="store_true", help="print the raw snapshot")

    p = sub.add_parser("submit", help="submit a job")
    p.add_argument("task")
    p.add_argument("--payload", help="JSON object, or @file.json")
    p.add_argument("-p", "--param", action="append", help="payload field name=value (repeatable)")
    p.add_argument("--queue")
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="wait until the job ends; exit 0/1/2")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    client_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="show a job's status")
    p.add_argument("job_id")
    client_options(p)
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
