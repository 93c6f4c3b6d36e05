"""Template time of the two polling fragments, against the issue's budget of one millisecond.

The job page's live part and a 25-row jobs table are rendered from snapshot
documents shaped like the live store's, many times over; no Redis or SQL is
involved (a fragment request's one read is measured by bench/get_throughput.py).
The last line is `ratio X.XX`: the live fragment's mean render time over 1 ms
(lower is better; under 1 meets the budget).

python bench/web_fragments.py
"""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from typing import Any

os.environ.setdefault("CONVEYOR_ENVIRONMENT", "production")
os.environ.setdefault("CONVEYOR_SECRET_KEY", "bench-secret-bench-secret-bench-secret")

from jobs.clock import isoformat, utcnow
from web.job_view import table_trigger, view_of
from web.rendering import render_text
from web.session import new_session

BUDGET_US = 1000.0
ROUNDS = 2000


def snapshot(status: str, progress: float | None, seq: int) -> bytes:
    now = isoformat(utcnow())
    doc: dict[str, Any] = {
        "job_id": str(uuid.uuid4()),
        "task": "long_task",
        "queue": "default",
        "status": status,
        "progress": progress,
        "message": f"step {int(progress or 0)}/100",
        "result": {"sum": 4950, "n": 100} if status == "finished" else None,
        "result_ref": None,
        "error": None,
        "attempt": 1,
        "max_retries": 0,
        "created_at": now,
        "enqueued_at": now,
        "started_at": now,
        "ended_at": now if status == "finished" else None,
        "updated_at": now,
        "eta_seconds": 2.5 if status == "started" else None,
        "seq": seq,
    }
    return json.dumps(doc).encode()


def timed(render: Any) -> list[float]:
    for _ in range(50):
        render()
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        render()
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def main() -> None:
    session = new_session(key_id="k1", tenant="acme", role="member", binding="bench")
    base = {"base": "", "session": session, "path": "/", "request": None, "notice": None}
    live_doc = snapshot("started", 42.0, 23)
    rows_docs = [snapshot("started" if i % 3 else "finished", float(i * 4 % 100), i + 1) for i in range(25)]

    def live() -> str:
        return render_text("_job_live.html", {**base, "job": view_of(live_doc, control=None)})

    def table() -> str:
        rows = [view_of(doc, with_actions=False) for doc in rows_docs]
        context = {
            **base,
            "rows": rows,
            "filters": {"status": "", "task": "", "queue": ""},
            "cursor": "",
            "next_cursor": None,
            "trigger": table_trigger([r.status for r in rows]),
            "query": "",
        }
        return render_text("_jobs_table.html", context)

    live_us = timed(live)
    table_us = timed(table)
    for name, samples in (("job live fragment", live_us), ("jobs table fragment, 25 rows", table_us)):
        p95 = sorted(samples)[int(len(samples) * 0.95)]
        print(f"{name}: mean {statistics.fmean(samples):.0f} us, p95 {p95:.0f} us (parse + redact + render)")
    print(f"anchor: the issue's budget, {BUDGET_US:.0f} us per fragment")
    print(f"ratio {statistics.fmean(live_us) / BUDGET_US:.2f}")


if __name__ == "__main__":
    main()
