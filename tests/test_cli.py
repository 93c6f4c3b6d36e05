"""The `conveyor` command: every subcommand scriptable, errors clear, exit codes meaningful."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from tests.conftest import ROOT, Backend, ServerProcess, Tenant


def conveyor(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_keys_create_prints_the_key_alone_on_the_last_line(env: Backend, app: Any):
    from fastapi.testclient import TestClient

    done = conveyor("keys", "create", "--tenant", "cli-tenant", "--role", "member", env=env.env())
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("cvk_") and " " not in key
    with TestClient(app) as client:
        assert client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_keys_create_refuses_bad_input(env: Backend):
    done = conveyor("keys", "create", "--tenant", "bad tenant!", "--role", "member", env=env.env())
    assert done.returncode == 2
    assert "Invalid tenant name" in done.stderr
    done = conveyor("keys", "create", "--tenant", "ok", "--role", "owner", env=env.env())
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def test_migrate_creates_a_fresh_database(tmp_path):
    done = conveyor("migrate", env={"DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fresh.db").exists()


def test_submit_wait_and_status_against_a_live_server(
    env: Backend, live_server: ServerProcess, worker: Any, tenant: Tenant
):
    common = ["--url", live_server.url, "--key", tenant.key]
    done = conveyor("submit", "long_task", "-p", "n=5", "-p", "delay=0", "--wait", "--json", *common)
    assert done.returncode == 0, done.stderr
    import json

    snap = json.loads(done.stdout)
    assert snap["status"] == "finished" and snap["result"] == {"sum": 10, "n": 5}

    failed = conveyor("submit", "always_fails", "--payload", '{"message": "nope"}', "--wait", *common)
    assert failed.returncode == 1
    assert "ValueError: nope" in failed.stdout

    status = conveyor("status", snap["job_id"], *common)
    assert status.returncode == 0 and "finished" in status.stdout


def test_submit_reports_api_errors_clearly(env: Backend, live_server: ServerProcess, tenant: Tenant):
    done = conveyor("submit", "no_such_task", "--url", live_server.url, "--key", tenant.key)
    assert done.returncode == 1
    assert "404" in done.stderr and "Unknown task" in done.stderr
    bad = conveyor(
        "submit", "long_task", "--payload", "{not json", "--url", live_server.url, "--key", tenant.key
    )
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    nokey = conveyor(
        "status",
        "x",
        "--url",
        live_server.url,
        env={"CONVEYOR_API_KEY": "", "CONVEYOR_DATA_DIR": "/nonexistent"},
    )
    assert nokey.returncode == 2 and "no API key" in nokey.stderr


def test_unreachable_api_is_a_clear_error():
    done = conveyor("status", "x", "--url", "http://127.0.0.1:9", "--key", "k")
    assert done.returncode == 1
    assert "could not reach the API" in done.stderr


def _ops_named(parser: argparse.ArgumentParser) -> set[str]:
    """Every ``op`` a (sub)parser's defaults name, all the way down."""
    names = {parser.get_default("op")} - {None}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names |= _ops_named(sub)
    return names


def test_every_server_side_command_the_parser_names_is_in_cli_ops():
    import importlib

    from cli import ops
    from cli.main import OP_MODULES, build_parser

    named = _ops_named(build_parser())
    assert named - set(OP_MODULES) == set(ops.COMMANDS)
    for op, module in OP_MODULES.items():  # the worker's command has a module of its own
        assert op in named and op in importlib.import_module(module).COMMANDS


def test_the_worker_command_starts_without_sql_or_the_api():
    """A worker must start in a fraction of a second (scaling out on queue depth waits for it)."""
    probe = (
        "import sys; import cli.main, cli.worker_op\n"
        "heavy = ('sqlalchemy', 'sqlmodel', 'alembic', 'fastapi', 'cli.ops')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_client_commands_start_without_the_server_side_modules():
    probe = (
        "import sys; from cli.main import build_parser; build_parser()\n"
        "print(sorted(m for m in ('cli.ops', 'sqlalchemy', 'rq', 'worker.main') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
