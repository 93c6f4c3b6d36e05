"""Chart geometry for server-rendered SVG: the numbers are computed here, the templates draw them.

No chart library and no script: an SVG with a `viewBox` scales to any width,
each bar carries a `<title>` (a tooltip, and text for screen readers), and
every chart sits next to a table with the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

WIDTH = 600
HEIGHT = 200
LEFT = 40  # room for the y-axis labels
BOTTOM = 24  # room for the x-axis labels
TOP = 8


def nice_step(value: float, *, whole: bool = False) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (at least 1 when ``whole``)."""
    if value <= 0:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return max(1, step * power) if whole else step * power
    return 10 * power


def seconds_label(ms: float) -> str:
    """An axis label for milliseconds: `0`, `250 ms`, `1.5 s`, `2 min`."""
    if ms == 0:
        return "0"
    if ms < 1000:
        return f"{ms:g} ms"
    if ms < 120_000:
        return f"{ms / 1000:g} s"
    return f"{ms / 60_000:g} min"


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Rect]
    x_labels: list[Label]
    y_labels: list[Label]
    grid: list[float]
    summary: str


def throughput_chart(days: list[dict[str, Any]]) -> Chart:
    """Stacked columns per day: finished, failed, canceled."""
    totals = [d["finished"] + d["failed"] + d["canceled"] for d in days]
    top = 4 * nice_step(max(totals, default=0) / 4, whole=True)
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(1, len(days))
    bar_w = max(1.0, slot * 0.7)
    bars: list[Rect] = []
    x_labels: list[Label] = []
    every = max(1, math.ceil(len(days) / 10))
    for i, day in enumerate(days):
        x = LEFT + i * slot + (slot - bar_w) / 2
        base = TOP + plot_h
        for part in ("finished", "failed", "canceled"):
            n = day[part]
            if not n:
                continue
            h = plot_h * n / top
            base -= h
            bars.append(
                Rect(
                    round(x, 2),
                    round(base, 2),
                    round(bar_w, 2),
                    round(h, 2),
                    part,
                    f"{day['day']}: {n} {part}",
                )
            )
        if i % every == 0:
            x_labels.append(Label(round(LEFT + i * slot + slot / 2, 2), HEIGHT - 6, day["day"][5:]))
    y_labels, grid = _y_axis(top, plot_h)
    summary = (
        f"Jobs ended per day, {days[0]['day']} to {days[-1]['day']}: {sum(totals)} in all."
        if days
        else "No days."
    )
    return Chart(WIDTH, HEIGHT, bars, x_labels, y_labels, grid, summary)


def _y_axis(top: float, plot_h: float) -> tuple[list[Label], list[float]]:
    labels, grid = [], []
    for k in range(5):
        value = top * k / 4
        y = round(TOP + plot_h - plot_h * k / 4, 2)
        grid.append(y)
        text = f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"
        labels.append(Label(LEFT - 6, y + 4, text))
    return labels, grid


def percentile_chart(series: dict[str, dict[str, Any]]) -> Chart:
    """Horizontal bars: p50, p95 and p99 of each measure (run and wait, in milliseconds)."""
    rows = [(name, p, values.get(p)) for name, values in series.items() for p in ("p50", "p95", "p99")]
    top = 4 * nice_step(max((v for _, _, v in rows if v is not None), default=0) / 4)
    row_h = 22
    height = TOP + row_h * len(rows) + BOTTOM
    left = 110
    plot_w = WIDTH - left - 30
    bars, labels = [], []
    for i, (name, p, value) in enumerate(rows):
        y = TOP + i * row_h
        labels.append(Label(left - 6, y + 15, f"{name} {p}"))
        if value is not None:
            w = max(1.0, plot_w * value / top)
            bars.append(Rect(left, y + 4, round(w, 2), row_h - 8, p, f"{name} {p}: {value:,} ms"))
    x_labels = [
        Label(round(left + plot_w * k / 4, 2), height - 6, seconds_label(top * k / 4)) for k in range(5)
    ]
    summary = (
        "; ".join(f"{name} {p} {value:,} ms" for name, p, value in rows if value is not None) or "No data."
    )
    return Chart(WIDTH, height, bars, x_labels, labels, [], summary)
