"""Plain RQ functions for the benchmarks' bare-RQ anchors. This module imports nothing, so a bare
RQ work-horse pays no more for it than a user's own task module would."""

from __future__ import annotations

import time


def bare_noop() -> None:
    return None


def bare_sleep(seconds: float) -> None:
    time.sleep(seconds)
