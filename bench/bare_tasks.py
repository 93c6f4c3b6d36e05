"""Plain RQ functions for the benchmarks' bare-RQ anchors. This module imports nothing of
Conveyor's, so a bare RQ work-horse pays no more for it than for a user's own task module."""

from __future__ import annotations

import time


def bare_noop() -> None:
    return None


def bare_sleep(seconds: float) -> None:
    time.sleep(seconds)
