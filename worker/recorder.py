"""The recorder's own entry point: ``python -m worker.recorder [--name NAME]``.

The worker starts its recorder (and maintenance loop) as a child process of
this module, rather than through the CLI, so the worker does not depend on
`cli/` and the child imports only what the recorder needs. `conveyor recorder`
runs the same function for a recorder of its own.

The stop signal is caught before anything heavy is imported: a worker that is
stopped while its recorder is still starting (the pool starts in a fraction of
the recorder's start-up) must still get what the journal holds drained to SQL,
not a recorder killed by SIGTERM's default action.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

STOP = threading.Event()


def _on_signal(signum: int, frame: Any) -> None:
    STOP.set()


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)

import argparse  # noqa: E402  (after the handlers, on purpose: see the docstring)
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from worker.recording import run_recorder  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Run the recorder until SIGTERM/SIGINT, then drain what is left."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.recorder", description="replay the live journal into SQL"
    )
    parser.add_argument("--name", help="consumer name (default: host.random.recorder)")
    args = parser.parse_args(argv)
    run_recorder(args.name, stop=STOP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
