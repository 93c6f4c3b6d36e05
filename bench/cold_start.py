"""Lambda cold start: the handler's import-and-first-request time in a fresh process, Conveyor's
`api.lambda_handler` versus a bare FastAPI + Mangum hello-world, in the same run.

    python bench/cold_start.py [--rounds 15] [--real]

Each round starts a fresh interpreter for each app (alternating) which imports the
handler module and answers one API Gateway HTTP API (v2) event for GET /healthz;
the time is measured inside the child, from before the import to the response,
so interpreter start-up (the same for both) is left out. Conveyor's modules are compiled
to bytecode first, as the Lambda image does (the Dockerfile runs compileall; FastAPI's
and Mangum's were compiled by pip): with PYTHONDONTWRITEBYTECODE set, and on Lambda's
read-only file system, Python would otherwise compile every module on every cold start,
which cost Conveyor ~85 ms that the anchor, all in site-packages, never paid. With --real, Conveyor
also answers a first authenticated GET /api/v1/jobs/{id} (SQLite and an embedded
Redis), reported for information: that request imports the database and Redis
clients it needs. A second anchor, the hello-world with one typed query
parameter, shows FastAPI's own cost of a typed route. The last line reads
`ratio X.XX` (Conveyor / the plain bare app; target <= 1.30).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EVENT = """
def event(path, headers=None):
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"host": "x.execute-api.eu-west-1.amazonaws.com", "x-forwarded-proto": "https",
                    "x-forwarded-port": "443", **(headers or {})},
        "requestContext": {"accountId": "1", "apiId": "x",
                           "domainName": "x.execute-api.eu-west-1.amazonaws.com", "domainPrefix": "x",
                           "requestId": "r", "routeKey": "$default", "stage": "$default",
                           "time": "23/Nov/2026:10:00:00 +0000", "timeEpoch": 0,
                           "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "203.0.113.7", "userAgent": "bench"}},
        "isBase64Encoded": False,
    }
"""

BARE = (
    "import time\nt0 = time.perf_counter()\n"
    + "from fastapi import FastAPI\nfrom mangum import Mangum\n"
    + "app = FastAPI()\n"
    + "@app.get('/healthz')\ndef healthz():\n    return {'status': 'ok'}\n"
    + "handler = Mangum(app, lifespan='off')\n"
    + EVENT
    + "r = handler(event('/healthz'), None)\nassert r['statusCode'] == 200, r\n"
    + "import json; print(json.dumps({'first': time.perf_counter() - t0}))\n"
)

TYPED = BARE.replace(
    "def healthz():\n    return {'status': 'ok'}\n",
    "def healthz(name: str = 'world'):\n    return {'status': 'ok', 'name': name}\n",
)
"""The same hello-world with one typed query parameter: FastAPI then builds a pydantic field for it,
and its pydantic-v1 compatibility check imports `pydantic.v1` (tens of ms) on the way, as it does
for every app whose routes take a typed parameter."""

CONVEYOR = (
    "import time\nt0 = time.perf_counter()\n"
    + "from api.lambda_handler import handler\n"
    + EVENT
    + "r = handler(event('/healthz'), None)\nassert r['statusCode'] == 200, r\n"
    + "first = time.perf_counter() - t0\n"
    + "import json, os, sys\n"
    + "HEAVY = ('sqlalchemy', 'sqlmodel', 'redis', 'rq', 'psycopg')\n"
    + "out = {'first': first, 'heavy_at_first': sorted(m for m in HEAVY if m in sys.modules)}\n"
    + "if os.environ.get('BENCH_JOB_ID'):\n"
    + "    t1 = time.perf_counter()\n"
    + "    r = handler(event('/api/v1/jobs/' + os.environ['BENCH_JOB_ID'],\n"
    + "                      {'authorization': 'Bearer ' + os.environ['BENCH_KEY']}), None)\n"
    + "    assert r['statusCode'] == 200, r\n"
    + "    out['real'] = time.perf_counter() - t1\n"
    + "print(json.dumps(out))\n"
)


def run_child(code: str, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def prepare_real(env: dict[str, str], tmp: Path) -> object:
    """An embedded Redis and a SQLite database with one job and a key (for --real)."""
    from jobs.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp / "redis", persist=False)
    env["REDIS_URL"] = server.start()
    env["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.db'}"
    os.environ.update(env)
    from jobs.access.auth import create_key
    from jobs.actions.submit import submit_job
    from jobs.history.db import session_scope
    from jobs.history.migrate import upgrade
    from jobs.state.redis_conn import get_redis

    upgrade()
    with session_scope() as session:
        _, key = create_key(session, tenant="bench", role="member")
        job = submit_job(
            session=session,
            client=get_redis(),
            tenant="bench",
            owner=None,
            task="long_task",
            payload={"n": 1},
            queue="default",
        )
    env["BENCH_JOB_ID"], env["BENCH_KEY"] = job.job_id, key
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--real", action="store_true", help="also time a first real authenticated request")
    args = parser.parse_args()

    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CONVEYOR_ENVIRONMENT": "production",
        "CONVEYOR_SECRET_KEY": "bench-secret-not-for-production-use",
        "AWS_LAMBDA_FUNCTION_NAME": "conveyor-bench",
        "REDIS_URL": "redis://127.0.0.1:1/0",  # /healthz touches neither Redis nor SQL
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    }
    for package in ("api", "web", "jobs", "worker", "cli"):
        compileall.compile_dir(ROOT / package, quiet=1)
    server = prepare_real(env, Path(tempfile.mkdtemp(prefix="conveyor-cold-"))) if args.real else None

    bare: list[float] = []
    typed: list[float] = []
    conveyor: list[float] = []
    real: list[float] = []
    loaded: list[str] = []
    try:
        run_child(BARE, env), run_child(CONVEYOR, env)  # warm the page cache
        for i in range(1, args.rounds + 1):
            b = run_child(BARE, env)["first"]
            t = run_child(TYPED, env)["first"]
            c_out = run_child(CONVEYOR, env)
            bare.append(b)
            typed.append(t)
            conveyor.append(c_out["first"])
            loaded = list(c_out.get("heavy_at_first", []))
            if "real" in c_out:
                real.append(c_out["real"])
            print(
                f"round {i:2d}  bare {b * 1000:6.1f} ms   typed {t * 1000:6.1f} ms   "
                f"conveyor {c_out['first'] * 1000:6.1f} ms"
            )
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
    b, c = statistics.median(bare), statistics.median(conveyor)
    print(f"bare FastAPI + Mangum, import + first request (median)  {b * 1000:6.1f} ms")
    t = statistics.median(typed)
    print(f"hello-world with one typed parameter (median)           {t * 1000:6.1f} ms")
    print(f"Conveyor, import + first request (median)               {c * 1000:6.1f} ms")
    print(f"Conveyor / typed hello-world: {c / t:.2f}")
    print(f"heavy modules loaded by Conveyor's first request: {', '.join(loaded) or 'none'}")
    if real:
        print(
            f"Conveyor's first authenticated GET /api/v1/jobs/{{id}} after that (median) "
            f"{statistics.median(real) * 1000:6.1f} ms"
        )
    print(f"ratio {c / b:.2f}")


if __name__ == "__main__":
    main()
