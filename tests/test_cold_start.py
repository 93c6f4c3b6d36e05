"""A Lambda cold start is mostly import time: creating the app and answering a request that
needs no store must not import the database or Redis clients (bench/cold_start.py measures it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("sqlalchemy", "sqlmodel", "redis", "rq", "psycopg", "alembic", "prometheus_client", "boto3")

PROBE = """
import json, sys
from api.lambda_handler import handler
from tests.lambda_events import make_event
response = handler(make_event("http_api", "GET", "/healthz"), None)
import gc
from jobs.snapshot import JobSnapshot
print(json.dumps({
    "status": response["statusCode"],
    "loaded": [m for m in HEAVY if m in sys.modules],
    "gc_enabled": gc.isenabled(),
    "snapshot_model_built": JobSnapshot.__pydantic_complete__,
}))
"""


def test_the_lambda_handler_imports_no_store_client_until_a_request_needs_one():
    env = {
        **os.environ,
        "CONVEYOR_ENVIRONMENT": "production",
        "CONVEYOR_SECRET_KEY": "cold-start-probe-secret-4fK8pQ2mZx7Rt",
    }
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PROBE}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200
    assert result["loaded"] == [], f"imported at cold start: {result['loaded']}"
    # The collector, paused while the app is built, runs again; the API's models wait for first use.
    assert result["gc_enabled"] is True
    assert result["snapshot_model_built"] is False
