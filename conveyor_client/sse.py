"""A Server-Sent Events parser (the WHATWG event-stream format), fed one line at a time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerEvent:
    data: str
    id: str | None = None
    event: str = "message"


class EventParser:
    """Turns the lines of a `text/event-stream` into events; comments (heartbeats) are skipped."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._id: str | None = None
        self._event = ""
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, line: str) -> ServerEvent | None:
        """Feed one line (without its newline); returns an event when a blank line completes one."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> ServerEvent | None:
        if self._id is not None:
            self.last_event_id = self._id
        if not self._data:
            self._event, self._id = "", None
            return None
        event = ServerEvent(data="\n".join(self._data), id=self._id, event=self._event or "message")
        self._data, self._event, self._id = [], "", None
        return event
