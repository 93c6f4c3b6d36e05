"""The recorder's own entry point: ``python -m worker.recorder [--name NAME]``.

The worker starts its recorder (and maintenance loop) as a child process of
this module, rather than through the CLI, so the worker does not depend on
`cli/` and the child imports only what the recorder needs. `conveyor recorder`
runs the same function for a recorder of its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker.main import run_recorder


def main(argv: Sequence[str] | None = None) -> int:
    """Run the recorder until SIGTERM/SIGINT, then drain what is left."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.recorder", description="replay the live journal into SQL"
    )
    parser.add_argument("--name", help="consumer name (default: host.random.recorder)")
    args = parser.parse_args(argv)
    run_recorder(args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
