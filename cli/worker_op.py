"""`conveyor worker`, apart from the other server-side commands (cli/ops.py): a worker must start
in a fraction of a second (scaling out on queue depth waits for it), and those commands load SQL,
the API and the migrations, which the worker's processes never use."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from worker.main import run_worker


def cmd_worker(args: argparse.Namespace) -> int:
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    run_worker(
        queues,
        burst=args.burst,
        concurrency=args.concurrency,
        name=args.name,
        recorder=not args.no_recorder,
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"worker": cmd_worker}
