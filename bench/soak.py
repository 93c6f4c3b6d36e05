"""A bounded soak on loopback: steady submits, workers killed at random, Redis restarted empty once,
SSE streams and long polls open throughout. Then it settles and checks every promise.

    python bench/soak.py                      # 10 minutes, SQLite
    python bench/soak.py --minutes 2          # shorter
    DATABASE_URL=postgresql://… python bench/soak.py

It prints jobs submitted, jobs lost (must be 0), jobs run twice without a retry (0), 5xx (0),
SQL/live mismatches after settling (0) and the RSS growth of the API and worker processes, and
exits 1 when any of the zeros is not. A killed worker is killed as a container dies: SIGKILL to
its whole process group (work horse and scheduler included). Submits refused with 503 while Redis
is down are retried after Retry-After, as a client should; they are counted, not hidden.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import ROOT, Stack, raise_fd_limit, rss_bytes
from jobs.embedded import free_port

TERMINAL = {"finished", "failed", "canceled"}


@dataclass
class Tally:
    """What every client thread saw, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    refused_503: int = 0
    unavailable_at: list[tuple[str, float]] = field(default_factory=list)
    transport_errors: int = 0
    stream_events: int = 0
    polls: int = 0

    def saw(self, channel: str, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[f"{channel} {response.status_code}"] += 1
            if response.status_code == 503:
                self.unavailable_at.append((channel, time.monotonic()))
            elif response.status_code >= 500:
                self.server_errors.append(f"{channel} {response.status_code}: {response.text[:200]}")

    def recent(self, n: int = 5) -> list[str]:
        with self.lock:
            return self.accepted[-n:]


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.stop = threading.Event()
        self.tally = Tally()
        self.stack = Stack(
            queues=["soak"],
            extra_env={
                "CONVEYOR_SECRET_KEY": secrets.token_urlsafe(48),
                "CONVEYOR_LOG_LEVEL": "WARNING",
            },
        )
        self.run_log = self.stack.tmp / "runs.log"
        self.stack.env["SOAK_RUN_LOG"] = str(self.run_log)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {self.stack.key}"}
        self.workers: list[subprocess.Popen[bytes]] = []
        self.worker_started: dict[int, float] = {}
        self.rss_first: dict[int, int] = {}
        self.kills = 0
        self.redis_restarted_at: float | None = None

    # --- processes --------------------------------------------------------------------------
    def start_worker(self) -> None:
        log = (self.stack.tmp / "workers.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--queues", "soak"],
            env=self.stack.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.workers.append(proc)
        self.worker_started[proc.pid] = time.monotonic()

    def kill_a_worker(self) -> None:
        alive = [w for w in self.workers if w.poll() is None]
        if not alive:
            return
        victim = self.rng.choice(alive)
        os.killpg(victim.pid, signal.SIGKILL)  # the whole container: worker, horse, scheduler
        victim.wait()
        self.kills += 1
        self.start_worker()

    def restart_redis_empty(self) -> None:
        server = self.stack.redis_server
        assert server is not None, "the soak restarts its own Redis; unset REDIS_URL"
        server.stop()
        server.start()  # same port, no persistence: every key is gone
        self.redis_restarted_at = time.monotonic()

    # --- clients ----------------------------------------------------------------------------
    def submitter(self) -> None:
        interval = 1.0 / self.args.rate
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=10) as client:
            next_at = time.monotonic()
            while not self.stop.is_set():
                body = {"task": "soak_step", "payload": {"seconds": self.rng.uniform(0.005, 0.05)}}
                try:
                    response = client.post("/api/v1/jobs", json=body)
                except httpx.HTTPError:
                    with self.tally.lock:
                        self.tally.transport_errors += 1
                    time.sleep(0.5)
                    continue
                self.tally.saw("submit", response)
                if response.status_code == 201 or response.status_code == 200:
                    with self.tally.lock:
                        self.tally.accepted.append(response.json()["job_id"])
                elif response.status_code == 503:
                    with self.tally.lock:
                        self.tally.refused_503 += 1
                    time.sleep(min(float(response.headers.get("Retry-After", "1")), 5))
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    def on_recent_jobs(self, visit: Callable[[httpx.Client, str], None]) -> None:
        """Until the soak stops, ``visit`` one of the newest jobs after another (a client thread)."""
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=30) as client:
            while not self.stop.is_set():
                recent = self.tally.recent()
                if not recent:
                    time.sleep(0.2)
                    continue
                opened = time.monotonic()
                try:
                    visit(client, self.rng.choice(recent))
                except httpx.HTTPError:
                    with self.tally.lock:
                        self.tally.transport_errors += 1
                    time.sleep(0.5)
                # A stream or poll of a job that already ended answers at once: don't spin on those.
                time.sleep(max(0.0, 0.25 - (time.monotonic() - opened)))

    def stream(self, client: httpx.Client, job_id: str) -> None:
        with client.stream("GET", f"/api/v1/jobs/{job_id}/stream") as response:
            self.tally.saw("stream", response)
            for line in response.iter_lines():
                if line.startswith("data:"):
                    with self.tally.lock:
                        self.tally.stream_events += 1
                if self.stop.is_set():
                    break

    def poll(self, client: httpx.Client, job_id: str) -> None:
        response = client.get(f"/api/v1/jobs/{job_id}/poll", params={"timeout": 5})
        self.tally.saw("poll", response)
        with self.tally.lock:
            self.tally.polls += 1

    # --- the run ----------------------------------------------------------------------------
    def sample_rss(self, procs: list[subprocess.Popen[bytes]]) -> None:
        """The first RSS of each process once it has run 30 s (imports done, caches warm)."""
        now = time.monotonic()
        for proc in procs:
            if proc.poll() is None and now - self.worker_started.get(proc.pid, 0.0) >= 30:
                with contextlib.suppress(OSError, RuntimeError):
                    self.rss_first.setdefault(proc.pid, rss_bytes(proc.pid))

    def run(self) -> int:
        raise_fd_limit()
        api = self.stack.serve("api.main:app", self.port)
        for _ in range(self.args.workers):
            self.start_worker()
        threads = [threading.Thread(target=self.submitter, daemon=True)]
        threads += [
            threading.Thread(target=self.on_recent_jobs, args=(visit,), daemon=True)
            for visit, count in ((self.stream, self.args.streams), (self.poll, self.args.polls))
            for _ in range(count)
        ]
        for thread in threads:
            thread.start()

        seconds = self.args.minutes * 60
        began = time.monotonic()
        restart_at = began + seconds / 2
        kill_times = sorted(began + self.rng.uniform(0.1, 0.9) * seconds for _ in range(self.args.kills))
        warm_at = began + min(30.0, seconds / 4)  # the API's first sample
        last_report = began
        while time.monotonic() - began < seconds:
            now = time.monotonic()
            if now >= warm_at:
                self.sample_rss([api, *self.workers])
            if kill_times and now >= kill_times[0]:
                kill_times.pop(0)
                self.kill_a_worker()
            if self.redis_restarted_at is None and now >= restart_at:
                self.restart_redis_empty()
            if now - last_report >= 30:
                last_report = now
                print(
                    f"  {now - began:5.0f}s: {len(self.tally.accepted)} accepted, {self.kills} kills, "
                    f"redis restarted: {self.redis_restarted_at is not None}",
                    flush=True,
                )
            time.sleep(0.2)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=40)
        rss_end = {}
        for proc in [api, *self.workers]:
            if proc.poll() is None:
                with contextlib.suppress(OSError, RuntimeError):
                    rss_end[proc.pid] = rss_bytes(proc.pid)
        return self.settle_and_judge(api, rss_end)

    def settle_and_judge(self, api: subprocess.Popen[bytes], rss_end: dict[int, int]) -> int:
        from redis import Redis
        from sqlmodel import col, select

        from jobs.history.db import session_scope
        from jobs.history.models import Job
        from jobs.state.live import read_heads

        ids = list(self.tally.accepted)

        def sql_states() -> dict[str, tuple[str, int]]:
            found: dict[str, tuple[str, int]] = {}
            with session_scope() as session:
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    rows = session.exec(
                        select(Job.job_id, Job.status, Job.attempt).where(col(Job.job_id).in_(chunk))
                    )
                    found.update({job_id: (status, attempt) for job_id, status, attempt in rows})
            return found

        redis = Redis.from_url(self.stack.redis_url)

        def live_states() -> dict[str, str]:
            found: dict[str, str] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                for job_id, head in zip(chunk, read_heads(redis, chunk, ("status",)), strict=True):
                    if head.status is not None:
                        found[job_id] = head.status.value
            return found

        deadline = time.monotonic() + self.args.settle
        while True:
            sql = sql_states()
            live = live_states()
            unsettled = [i for i in ids if sql.get(i, ("missing", 0))[0] not in TERMINAL]
            mismatched = [i for i, status in live.items() if sql.get(i, ("missing", 0))[0] != status]
            if (not unsettled and not mismatched) or time.monotonic() > deadline:
                break
            time.sleep(1)

        runs: Counter[tuple[str, int]] = Counter()
        per_job: Counter[str] = Counter()
        if self.run_log.exists():
            for line in self.run_log.read_text().splitlines():
                job_id, attempt = line.split()
                runs[(job_id, int(attempt))] += 1
                per_job[job_id] += 1
        twice = sorted(
            {job_id for (job_id, _), n in runs.items() if n > 1}
            | {job_id for job_id, n in per_job.items() if n > sql.get(job_id, ("", 1))[1]}
        )
        lost = [i for i in ids if sql.get(i, ("missing", 0))[0] != "finished"]

        def growth(pids: list[int]) -> str:
            parts = []
            for pid in pids:
                if pid in self.rss_first and pid in rss_end:
                    delta = rss_end[pid] - self.rss_first[pid]
                    first, last = self.rss_first[pid] / 2**20, rss_end[pid] / 2**20
                    parts.append(f"{first:.0f}→{last:.0f} MiB ({delta / 2**20:+.1f})")
            return ", ".join(parts) or "n/a"

        survivors = [w.pid for w in self.workers if w.poll() is None]
        print()
        restarted = self.redis_restarted_at is not None
        print(f"soak: {self.args.minutes:g} min, {self.args.rate:g} submits/s, {self.args.workers} workers, "
              f"{self.args.streams} SSE streams + {self.args.polls} long polls open, "
              f"{self.kills} worker kills, Redis restarted empty once: {restarted}")  # fmt: skip
        print(f"jobs submitted (accepted):        {len(ids)}")
        print(f"submits refused 503 and retried:  {self.tally.refused_503}")
        print(f"stream events / long polls:       {self.tally.stream_events} / {self.tally.polls}")
        print(f"transport errors (client side):   {self.tally.transport_errors}")
        print(f"responses:                        {dict(sorted(self.tally.statuses.items()))}")
        lost_as = Counter(sql.get(i, ("missing", 0))[0] for i in lost)
        print(f"jobs lost (not finished):         {len(lost)}  {dict(lost_as)}")
        print(f"jobs run twice without a retry:   {len(twice)}  {twice[:5]}")
        print(f"SQL/live mismatches after settle: {len(mismatched)}  {mismatched[:5]}")
        print(f"API RSS:                          {growth([api.pid])}")
        print(f"worker RSS (survivors):           {growth(survivors)}")
        # 503 is the promised answer while Redis restarts (submits, and streams that need the live
        # state); anywhere else it is a failure like any other 5xx.
        window = (self.redis_restarted_at or 0.0) - 5, (self.redis_restarted_at or 0.0) + 10
        outside = [f"{ch} 503" for ch, at in self.tally.unavailable_at if not window[0] <= at <= window[1]]
        errors = [*self.tally.server_errors, *outside]
        inside = len(self.tally.unavailable_at) - len(outside)
        print(f"503 within 10 s of the restart:   {inside}")
        print(f"5xx (any, 503 outside that):      {len(errors)}  {errors[:3]}")
        failures = len(lost) + len(twice) + len(errors) + len(mismatched)
        print(f"soak: {'PASS' if failures == 0 else 'FAIL'}: lost {len(lost)}, twice {len(twice)}, "
              f"5xx {len(errors)}, mismatches {len(mismatched)}")  # fmt: skip
        return 0 if failures == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "10")))
    parser.add_argument("--rate", type=float, default=10.0, help="submits per second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kills", type=int, default=6, help="workers SIGKILLed at random times")
    parser.add_argument("--streams", type=int, default=8, help="SSE streams kept open")
    parser.add_argument("--polls", type=int, default=4, help="long polls kept open")
    parser.add_argument("--settle", type=float, default=180, help="seconds to wait for SQL to settle")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    os.environ.pop("REDIS_URL", None)  # the soak must own its Redis to restart it empty
    soak = Soak(args)
    try:
        return soak.run()
    finally:
        soak.stop.set()
        for proc in soak.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        soak.stack.close()


if __name__ == "__main__":
    sys.exit(main())
