"""How every `conveyor` command fails: a message on stderr and a non-zero exit status."""

from __future__ import annotations

import sys

EXIT_USAGE = 2


def fail(message: str, code: int = 1) -> int:
    print(f"conveyor: {message}", file=sys.stderr)
    return code
