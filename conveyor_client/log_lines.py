"""A job's log as the client returns it: lines, and a page of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class LogLine:
    """One line a job's task logged (or printed, level ``PRINT``). ``seq`` is its place in the
    job's log: the cursor of pages and the id of the stream's events."""

    seq: int
    at: datetime
    level: str
    logger: str
    message: str
    attempt: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogLine:
        return cls(
            seq=int(data["seq"]),
            at=datetime.fromisoformat(str(data["at"]).replace("Z", "+00:00")),
            level=str(data["level"]),
            logger=str(data["logger"]),
            message=str(data["message"]),
            attempt=int(data["attempt"]),
            raw=data,
        )

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S.%f}"[:-3] + f" {self.level:<7} {self.logger}: {self.message}"


@dataclass(frozen=True)
class LogPage:
    """Lines of a job's log, oldest first; ask for ``after=next_cursor`` while it is set."""

    items: list[LogLine] = field(default_factory=list)
    next_cursor: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogPage:
        cursor = data.get("next_cursor")
        return cls(
            [LogLine.from_json(item) for item in data["items"]], None if cursor is None else int(cursor)
        )
