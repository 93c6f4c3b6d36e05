"""eta_seconds: estimated from the job's progress rate since it started; null until it can be."""

from __future__ import annotations

from datetime import timedelta

from jobs.clock import utcnow
from tests.conftest import Backend
from worker.progress import Progress


def progress_started(seconds_ago: float, redis_client: object) -> Progress:
    return Progress(
        job_id="job", attempt=1, started_at=utcnow() - timedelta(seconds=seconds_ago), client=redis_client
    )


def test_eta_follows_the_rate_so_far(env: Backend, redis_client: object):
    ten_seconds_in = progress_started(10, redis_client)
    assert ten_seconds_in._eta(25.0) == 30.0  # 25 % in 10 s: 75 % takes 30 s more
    assert ten_seconds_in._eta(50.0) == 10.0
    assert ten_seconds_in._eta(99.0) == 0.1


def test_eta_is_null_until_it_can_be_estimated(env: Backend, redis_client: object):
    assert progress_started(10, redis_client)._eta(0.0) is None  # no progress, no rate
    assert progress_started(10, redis_client)._eta(None) is None
    assert progress_started(10, redis_client)._eta(100.0) is None  # done
    assert progress_started(0.1, redis_client)._eta(50.0) is None  # too early to trust a rate
