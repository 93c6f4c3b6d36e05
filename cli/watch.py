"""`conveyor watch` and `conveyor submit --wait`: follow a job (or a batch) live, with a rich progress bar.

The bar goes to stderr, so stdout carries only the final summary (or, with
`--json`, one snapshot per line) for scripts. Exit codes: 0 finished,
1 failed, 2 canceled, 3 still running when `--timeout` ran out.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

EXIT_BY_STATUS = {"finished": 0, "failed": 1, "canceled": 2}
EXIT_TIMEOUT = 3
STATUS_STYLE = {
    "queued": "yellow",
    "scheduled": "yellow",
    "deferred": "yellow",
    "started": "cyan",
    "paused": "magenta",
    "finished": "green",
    "failed": "red",
    "canceled": "bright_black",
}


def format_eta(seconds: float | None) -> str:
    """`ETA 1m05s`, `ETA 42s`, or nothing while the job cannot estimate it."""
    if seconds is None:
        return ""
    whole = max(0, round(seconds))
    if whole >= 3600:
        return f"ETA {whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"ETA {whole // 60}m{whole % 60:02d}s"
    return f"ETA {whole}s"


def _fields(snap: Any) -> dict[str, Any]:
    style = STATUS_STYLE.get(snap.status, "white")
    return {
        "status": f"[{style}]{snap.status:<8}[/{style}]",
        "eta": format_eta(snap.eta_seconds) if not snap.is_terminal else "",
        "message": snap.message or "",
    }


def follow(
    client: Any,
    job_id: str,
    *,
    timeout: float | None = None,
    as_json: bool = False,
    channels: Sequence[str] | None = None,
    console: Console | None = None,
) -> Any:
    """Follow a job until it ends and return its terminal snapshot (TimeoutError on ``timeout``).

    With ``as_json`` every snapshot is printed to stdout as one JSON line; otherwise a
    progress bar with the job's status, message and ETA is drawn on stderr.
    """
    kwargs: dict[str, Any] = {"timeout": timeout}
    if channels:
        kwargs["channels"] = channels
    last = None
    if as_json:
        for snap in client.updates(job_id, **kwargs):
            print(json.dumps(snap.raw), flush=True)
            last = snap
        return last

    console = console or Console(stderr=True, highlight=False)
    bar = Progress(
        TextColumn("{task.fields[status]}"),
        BarColumn(bar_width=None),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}"),
        TextColumn("{task.fields[message]}", style="dim"),
        console=console,
        expand=True,
    )
    with bar:
        task = bar.add_task(job_id, total=100.0, status="", eta="", message="")
        for snap in client.updates(job_id, **kwargs):
            completed = 100.0 if snap.status == "finished" else (snap.progress or 0.0)
            bar.update(task, completed=completed, **_fields(snap))
            last = snap
    return last


def batch_counts_text(snap: Any) -> str:
    """`812/1000 finished · 3 failed · 20 running`: the counts a batch's bar shows beside it."""
    counts = snap.counts
    parts = [f"{counts.get('finished', 0)}/{snap.size} finished"]
    for status in ("failed", "canceled"):
        if counts.get(status):
            parts.append(f"{counts[status]} {status}")
    running = counts.get("started", 0) + counts.get("paused", 0)
    if running:
        parts.append(f"{running} running")
    return " · ".join(parts)


def follow_batch(
    client: Any,
    batch_id: str,
    *,
    timeout: float | None = None,
    as_json: bool = False,
    channels: Sequence[str] | None = None,
    console: Console | None = None,
) -> Any:
    """Follow a batch until every job ended, with ONE bar for all of them; returns its last snapshot.

    The bar's length is the batch's progress (ended jobs, plus running jobs' own progress); beside
    it the status, the counts and the ETA. ``as_json`` prints each batch snapshot as a JSON line.
    """
    kwargs: dict[str, Any] = {"timeout": timeout}
    if channels:
        kwargs["channels"] = channels
    last = None
    if as_json:
        for snap in client.batch_updates(batch_id, **kwargs):
            print(json.dumps(snap.raw), flush=True)
            last = snap
        return last
    console = console or Console(stderr=True, highlight=False)
    bar = Progress(
        TextColumn("{task.fields[status]}"),
        BarColumn(bar_width=None),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}"),
        TextColumn("{task.fields[message]}", style="dim"),
        console=console,
        expand=True,
    )
    with bar:
        task = bar.add_task(batch_id, total=100.0, status="", eta="", message="")
        for snap in client.batch_updates(batch_id, **kwargs):
            style = STATUS_STYLE.get(snap.status, "white")
            bar.update(
                task,
                completed=snap.progress,
                status=f"[{style}]{snap.status:<8}[/{style}]",
                eta=format_eta(snap.eta_seconds) if not snap.is_terminal else "",
                message=batch_counts_text(snap),
            )
            last = snap
    return last


def exit_code(snap: Any) -> int:
    return EXIT_BY_STATUS.get(snap.status, EXIT_TIMEOUT)


def timed_out(message: str) -> int:
    print(f"conveyor: {message}", file=sys.stderr)
    return EXIT_TIMEOUT
