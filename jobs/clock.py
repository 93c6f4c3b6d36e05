"""Time in one format: aware UTC datetimes in code, ISO 8601 with `Z` on the wire."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    """Now, in UTC, at the millisecond precision of the wire format, so SQL rows and snapshots agree."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def isoformat(value: datetime | None) -> str | None:
    """`2026-01-02T03:04:05.678Z`: UTC, millisecond precision, or None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


MAX_DURATION = timedelta(days=100 * 366)
"""The longest duration ``parse_duration`` accepts (callers bound theirs more tightly)."""
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `45s`, `2w` (or plain seconds) as a timedelta; ValueError otherwise."""
    text = text.strip().lower()
    if text.replace(".", "", 1).isdigit():
        seconds = float(text)
    else:
        match = _DURATION.match(text)
        if match is None:
            raise ValueError(
                f"{text!r} is not a duration: use a number and a unit, like 90d, 12h, 30m or 45s"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION.total_seconds():  # timedelta itself overflows at 999,999,999 days
        raise ValueError(f"{text!r} is too long: at most {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)
