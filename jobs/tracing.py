"""Trace ids: taken from the submitting request, stored with the job, carried into the worker's logs.

The id comes from a W3C `traceparent` header (its trace-id part, as
OpenTelemetry propagates it), else from `X-Trace-Id` / `X-Request-Id`, else a
new random one; it is stored in `jobs.trace_id`, travels in the RQ job's meta,
and the runner sets it for the job's duration so every log line the task
writes carries it (`%(trace_id)s`, see :class:`TraceIdFilter`).
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
PLAIN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

current_trace_id: ContextVar[str | None] = ContextVar("conveyor_trace_id", default=None)


def trace_id_from_headers(traceparent: str | None = None, trace_id: str | None = None) -> str:
    """The trace id a job submitted with these headers belongs to (a new one when none is usable)."""
    if traceparent:
        match = TRACEPARENT.match(traceparent.strip().lower())
        if match and match.group(1) != "0" * 32:
            return match.group(1)
    if trace_id and PLAIN_ID.match(trace_id.strip()):
        return trace_id.strip()
    return uuid.uuid4().hex


class TraceIdFilter(logging.Filter):
    """Give every record a ``trace_id`` attribute: the running job's, or "-"."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = current_trace_id.get() or "-"
        return True
