"""What a task pays per line it logs while Conveyor captures its job's log, and the Redis calls it costs.

A task's loop logs N lines through `logging` (a logger at INFO whose records reach only
Conveyor's capture handler, as in a worker whose own log level is above INFO): once outside a
job (the record is made and dropped: what logging costs anyway) and once inside
`worker.job_log.capturing`, which redacts, encodes and buffers each line and flushes every
CONVEYOR_JOB_LOG_FLUSH_INTERVAL seconds in one pipeline. Redis is embedded and local; its
`INFO commandstats` count the calls. The cap is set above N so every line is kept.
Five alternated rounds of each, the best of each kept. The last line is `ratio X.XX`: the
per-line cost captured over the per-line cost uncaptured.

python bench/job_log_overhead.py [--lines 50000]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


ROUNDS = 5


def per_line_us(logger: logging.Logger, lines: int) -> float:
    started = time.perf_counter()
    for i in range(lines):
        logger.info("step %d of the work: token=%s", i, "abc")
    return (time.perf_counter() - started) / lines * 1e6


def redis_calls(client: object) -> int:
    stats = client.info("commandstats")  # type: ignore[attr-defined]
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=50_000)
    args = parser.parse_args()
    os.environ["CONVEYOR_JOB_LOG_MAX_LINES"] = str(args.lines + 10)
    os.environ["CONVEYOR_JOB_LOG_MAX_BYTES"] = str(256 * 1_048_576)
    os.environ.setdefault("CONVEYOR_ENVIRONMENT", "test")
    from redis import Redis

    from jobs.access.redaction import install_log_redaction
    from jobs.embedded import EmbeddedRedis
    from jobs.settings import get_settings
    from worker.job_log import capturing

    get_settings.cache_clear()
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="conveyor-bench-")), persist=False)
    client = Redis.from_url(server.start())
    try:
        install_log_redaction()  # as in a worker: every record is redacted once, where it is made
        logging.getLogger().setLevel(logging.WARNING)
        logger = logging.getLogger("bench.task")
        logger.setLevel(logging.INFO)
        logger.propagate = True
        with capturing("warm-up", 1, client):
            per_line_us(logger, 1000)
        bares, captures = [], []
        for round_ in range(ROUNDS):  # alternated, best of each: the cores are shared
            bares.append(per_line_us(logger, args.lines))
            before = redis_calls(client)
            started = time.perf_counter()
            with capturing(f"bench-job-{round_}", 1, client):
                captures.append(per_line_us(logger, args.lines))
            took = time.perf_counter() - started
            calls = redis_calls(client) - before
            kept = client.llen(f"cv:log:bench-job-{round_}")
        bare, captured = min(bares), min(captures)
    finally:
        server.stop()
    print(f"{args.lines} lines: {bare:.2f} us/line uncaptured, {captured:.2f} us/line captured")
    print(f"{kept} lines kept, {calls} Redis calls in {took:.2f} s ({calls / took:.1f}/s)")
    print(f"ratio {captured / bare:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
