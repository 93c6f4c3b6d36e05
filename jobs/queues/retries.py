"""Retry policy: how many times a failed attempt runs again, and after how long.

RQ's `Retry` takes a list of whole-second intervals and knows no backoff or
jitter, so the policy builds that list: explicit intervals when a task gives
them, else exponential backoff (``base * 2**n``, capped). Every interval is
spread by ±``jitter`` so that jobs that failed together do not retry in
lockstep. RQ needs the worker's scheduler to run a delayed retry.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` further attempts after a failure, waiting ``intervals`` (or a backoff) between them."""

    retries: int = 0
    intervals: tuple[int, ...] = ()
    backoff: float = 2.0
    backoff_max: float = 600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if any(i < 0 for i in self.intervals):
            raise ValueError("retry intervals must be >= 0 seconds")
        if self.backoff <= 0 or self.backoff_max <= 0:
            raise ValueError("retry backoff must be > 0 seconds")
        if not 0 <= self.jitter < 1:
            raise ValueError("retry jitter is a fraction in [0, 1)")

    def base_intervals(self) -> list[float]:
        """The interval before each retry, before jitter (the last explicit one repeats)."""
        if self.intervals:
            return [float(self.intervals[min(n, len(self.intervals) - 1)]) for n in range(self.retries)]
        return [min(self.backoff * 2**n, self.backoff_max) for n in range(self.retries)]

    def schedule(self, retries_left: int | None = None, rng: random.Random | None = None) -> list[int]:
        """Whole-second intervals for RQ's `Retry`, one per retry still left, jittered.

        RQ picks ``intervals[len - retries_left]`` for the next retry, so a job
        with fewer retries left gets the tail of its full schedule.
        """
        rng = rng or random.Random()
        full = []
        for base in self.base_intervals():
            spread = base * rng.uniform(1 - self.jitter, 1 + self.jitter) if base else 0.0
            full.append(max(1, round(spread)) if base else 0)
        left = self.retries if retries_left is None else max(0, min(retries_left, self.retries))
        return full[len(full) - left :] if left else []
