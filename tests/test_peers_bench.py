"""bench/peers.py's instrument: the marks every system's task writes, and the CPU of a worker
process tree with its reaped children (a forking worker's work-horses are reaped per job)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import peer_mark, peers


def test_marks_count_jobs_and_carry_their_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "marks"
    monkeypatch.setenv("BENCH_MARK_FILE", str(path))
    assert peers.marks(path) == 0
    before = time.time()
    peer_mark.noop()
    peer_mark.noop()
    assert peers.marks(path) == 2
    assert before <= peers.mark_time(path, 0) <= peers.mark_time(path, -1) <= time.time()


def test_tree_cpu_counts_a_reaped_child() -> None:
    child = "sum(range(10**7))"
    script = (
        f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {child!r}]); "
        "print(1, flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline()  # the child has run and been reaped
        started = time.process_time()
        sum(range(10**7))  # the child's work, here, for scale
        own = time.process_time() - started
        assert peers.tree_cpu([proc.pid]) >= own / 2
    finally:
        proc.kill()
        proc.wait()


def test_a_leg_that_hangs_is_cut_off_at_its_time_limit() -> None:
    """A peer's client call that never returns (Taskiq's once did) must not stall the whole run."""
    started = time.monotonic()
    with pytest.raises(peers.LegTimeout), peers.time_limit(1):
        time.sleep(30)
    assert time.monotonic() - started < 5
