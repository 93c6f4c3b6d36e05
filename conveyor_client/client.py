"""The synchronous client."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote

import httpx

from conveyor_client.errors import (
    MAYBE_SENT,
    NOT_SENT,
    RETRY_STATUSES,
    UNSERVED_STATUSES,
    ChannelUnavailable,
    ConveyorAPIError,
    is_safe_to_repeat,
    raise_for_error,
)
from conveyor_client.log_lines import LogLine, LogPage
from conveyor_client.snapshot import BatchCreated, BatchSnapshot, Page, Snapshot
from conveyor_client.sse import EventParser

CHANNELS = ("sse", "long_poll", "poll")
"""How `updates()` and `wait()` follow a job, in order of preference."""
LONG_POLL_SECONDS = 25  # below API Gateway's 29 s, so the same client works against Lambda
STREAM_READ_TIMEOUT = 60.0  # the server sends a heartbeat comment every 15 s by default
MAX_POLL_DELAY = 5.0


def submit_body(
    task: str,
    payload: dict[str, Any] | None,
    queue: str | None,
    timeout: int | None,
    run_at: datetime | str | None = None,
    delay: float | None = None,
    depends_on: list[str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"task": task, "payload": payload or {}}
    if queue:
        body["queue"] = queue
    if timeout:
        body["timeout"] = timeout
    if run_at is not None:
        body["run_at"] = run_at.isoformat() if isinstance(run_at, datetime) else run_at
    if delay is not None:
        body["delay"] = delay
    if depends_on:
        body["depends_on"] = list(depends_on)
    return body


def list_params(
    status: str | list[str] | None, task: str | None, queue: str | None, limit: int, cursor: str | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = [status] if isinstance(status, str) else status
    for name, value in (("task", task), ("queue", queue), ("cursor", cursor)):
        if value:
            params[name] = value
    return params


def refuse_stream(response: httpx.Response) -> None:
    """Raise what an SSE answer that is not a stream means (an error's body already read):
    ChannelUnavailable where the channel is not served, the API's error where retrying cannot
    help, a protocol error (retried) otherwise. Returns for a real event stream."""
    if response.status_code >= 400:
        try:
            raise_for_error(response)
        except ConveyorAPIError as exc:
            if channel_unserved(exc):
                raise ChannelUnavailable(f"SSE answered {exc.status_code}") from None
            if exc.status_code not in RETRY_STATUSES:
                raise
        raise httpx.RemoteProtocolError(f"SSE answered {response.status_code}")
    if not_an_event_stream(response):
        raise ChannelUnavailable("the stream is not text/event-stream")


def job_missing(exc: ConveyorAPIError) -> bool:
    """A 404 about the job itself (the API says "No job with id ..."), not about the route."""
    return exc.status_code == 404 and str(exc.detail).startswith("No job")


def channel_unserved(exc: ConveyorAPIError) -> bool:
    """Whether an error means "this channel is not served here" (a proxy, an older server), or
    not to this key right now (429: its stream cap is reached, and plain polling has none)."""
    return exc.status_code == 429 or (exc.status_code in UNSERVED_STATUSES and not job_missing(exc))


def not_an_event_stream(response: httpx.Response) -> bool:
    return not response.headers.get("content-type", "").startswith("text/event-stream")


def limits_path(tenant: str) -> str:
    return f"/api/v1/tenants/{quote(tenant, safe='')}/limits"


class Followable(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def is_terminal(self) -> bool: ...


T = TypeVar("T", bound=Followable)


@dataclass(frozen=True)
class Followed(Generic[T]):
    """What the channels follow: a job's or a batch's path, how to read its snapshot, its name."""

    base: str
    parse: Callable[[dict[str, Any]], T]
    ident: str
    kind: str = "job"

    @property
    def what(self) -> str:
        return f"{self.kind} {self.ident}"


class Deadline:
    """An optional time limit shared by the steps of one wait."""

    def __init__(self, seconds: float | None, job_id: str, kind: str = "job") -> None:
        self.at = None if seconds is None else time.monotonic() + seconds
        self.seconds = seconds
        self.job_id = job_id
        self.kind = kind
        self.status: str | None = None  # the job's last known status, for the timeout's message

    def left(self, cap: float) -> float:
        return cap if self.at is None else max(0.0, min(cap, self.at - time.monotonic()))

    def check(self) -> None:
        if self.at is not None and time.monotonic() >= self.at:
            status = self.status or "not done"
            raise TimeoutError(f"{self.kind} {self.job_id} is still {status} after {self.seconds} s")


class Client:
    """A synchronous Conveyor client.

    Connection failures are retried with backoff: any request when it certainly
    never reached the server, GETs (and submissions, which always carry an
    Idempotency-Key) also after failures where it may have.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries = retries
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request, retrying what is safe to retry (see the class), then raise API errors."""
        delay = 0.25
        safe = is_safe_to_repeat(method, httpx.Headers(kwargs.get("headers") or {}))
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, **kwargs)
            except NOT_SENT:
                if last:
                    raise
            except MAYBE_SENT:
                if last or not safe:
                    raise
            else:
                if response.status_code not in RETRY_STATUSES or last or not safe:
                    raise_for_error(response)
                    return response
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    # --- jobs ------------------------------------------------------------------------------------

    def submit(
        self,
        task: str,
        payload: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        timeout: int | None = None,
        idempotency_key: str | None = None,
        run_at: datetime | str | None = None,
        delay: float | None = None,
        depends_on: list[str] | None = None,
    ) -> Snapshot:
        """Submit a job. It always carries an Idempotency-Key (a fresh one unless you pass one),
        so a retry after a lost response returns the same job instead of creating another.

        ``run_at`` (an aware datetime) or ``delay`` (seconds) schedule it;
        ``depends_on`` makes it wait for those jobs to finish.
        """
        headers = {"Idempotency-Key": idempotency_key or f"cvc-{uuid.uuid4()}"}
        body = submit_body(task, payload, queue, timeout, run_at, delay, depends_on)
        return Snapshot.from_json(self.request("POST", "/api/v1/jobs", json=body, headers=headers).json())

    def get(self, job_id: str) -> Snapshot:
        return Snapshot.from_json(self.request("GET", f"/api/v1/jobs/{job_id}").json())

    def list_jobs(
        self,
        *,
        status: str | list[str] | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        params = list_params(status, task, queue, limit, cursor)
        data = self.request("GET", "/api/v1/jobs", params=params).json()
        return Page(items=[Snapshot.from_json(i) for i in data["items"]], next_cursor=data.get("next_cursor"))

    def cancel(self, job_id: str, *, reason: str | None = None) -> Snapshot:
        """Cancel a job (a running one is asked to stop; it may still show `started` for a moment)."""
        return self._control(job_id, "cancel", reason)

    def pause(self, job_id: str) -> Snapshot:
        """Ask a running job to hold at its next checkpoint."""
        return self._control(job_id, "pause")

    def resume(self, job_id: str) -> Snapshot:
        """Let a paused job continue."""
        return self._control(job_id, "resume")

    def restart(self, job_id: str, *, reason: str | None = None) -> Snapshot:
        """Run a failed or canceled job again under the same id (attempt + 1)."""
        return self._control(job_id, "restart", reason)

    def _control(self, job_id: str, action: str, reason: str | None = None) -> Snapshot:
        body = {"reason": reason} if reason else None
        response = self.request("POST", f"/api/v1/jobs/{job_id}/{action}", json=body)
        return Snapshot.from_json(response.json())

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/api/v1/jobs/{job_id}/events").json()["items"])

    def tasks(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/api/v1/tasks").json())

    # --- limits ----------------------------------------------------------------------------------

    def limits(self, tenant: str) -> dict[str, Any]:
        """A tenant's limits in force (an admin key: its own tenant; an operator key: any)."""
        return dict(self.request("GET", limits_path(tenant)).json())

    def set_limits(self, tenant: str, **changes: int | None) -> dict[str, Any]:
        """Change the named limits (None: back to the default); an operator key only."""
        return dict(self.request("PUT", limits_path(tenant), json=changes).json())

    # --- a job's log -----------------------------------------------------------------------------

    def logs(self, job_id: str, *, after: int = 0, limit: int = 200) -> LogPage:
        """A page of the job's log: up to ``limit`` lines after ``after`` (a line's seq)."""
        params = {"after": after, "limit": limit}
        return LogPage.from_json(self.request("GET", f"/api/v1/jobs/{job_id}/logs", params=params).json())

    def follow_logs(self, job_id: str, *, after: int = 0, timeout: float | None = None) -> Iterator[LogLine]:
        """Yield the job's log lines after ``after`` as they are written, ending once the job has
        ended and its last lines are in. Follows the SSE stream (resumed where it stopped);
        where streams are not served, pages the log every half second. TimeoutError after
        ``timeout`` seconds."""
        deadline = Deadline(timeout, job_id)
        try:
            for line in self._follow_log_stream(job_id, after, deadline):
                after = line.seq
                yield line
            return
        except ChannelUnavailable:
            pass
        yield from self._follow_log_pages(job_id, after, deadline)

    def _follow_log_stream(self, job_id: str, after: int, deadline: Deadline) -> Iterator[LogLine]:
        failures = 0
        while True:
            deadline.check()
            read = deadline.left(STREAM_READ_TIMEOUT) or 0.001
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
            try:
                with self._http.stream(
                    "GET",
                    f"/api/v1/jobs/{job_id}/logs/stream",
                    headers=headers,
                    timeout=httpx.Timeout(10.0, read=read),
                ) as response:
                    if response.status_code == 204:
                        return  # the job has ended and nothing follows `after`
                    if response.status_code >= 400:
                        response.read()
                    refuse_stream(response)
                    parser = EventParser()
                    for text in response.iter_lines():
                        event = parser.feed(text)
                        if event is None:
                            deadline.check()
                            continue
                        line = LogLine.from_json(json.loads(event.data))
                        failures, after = 0, line.seq
                        yield line
            except (*NOT_SENT, *MAYBE_SENT):
                failures += 1
                if failures > self.retries:
                    raise ChannelUnavailable("SSE keeps failing") from None
                time.sleep(min(0.25 * 2**failures, 5.0, deadline.left(5.0)))
            # A stream that ended (the job's end, a proxy's limit, Lambda's one batch) is resumed:
            # after the job's end the server answers 204.

    def _follow_log_pages(self, job_id: str, after: int, deadline: Deadline) -> Iterator[LogLine]:
        while True:
            ended = self.get(job_id).is_terminal  # before the page: its last lines are in by then
            page = self.logs(job_id, after=after, limit=1000)
            for line in page.items:
                after = line.seq
                yield line
            if page.next_cursor is not None:
                continue
            if ended:
                return
            deadline.check()
            time.sleep(deadline.left(0.5))

    # --- batches ---------------------------------------------------------------------------------

    def submit_batch(
        self,
        jobs: Sequence[dict[str, Any]],
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> BatchCreated:
        """Submit many jobs in one request, all or none. Each job is a dict with the fields
        :meth:`submit` takes (``task``, ``payload``, ``queue``, ``timeout``, ``tags``, ``delay``, ...).
        It carries an Idempotency-Key (fresh unless given), so a retry returns the same batch."""
        headers = {"Idempotency-Key": idempotency_key or f"cvc-{uuid.uuid4()}"}
        body: dict[str, Any] = {"jobs": list(jobs), "tags": list(tags)}
        if name:
            body["name"] = name
        data = self.request("POST", "/api/v1/batches", json=body, headers=headers).json()
        return BatchCreated(batch_id=data["batch_id"], job_ids=list(data["job_ids"]))

    def get_batch(self, batch_id: str) -> BatchSnapshot:
        return BatchSnapshot.from_json(self.request("GET", f"/api/v1/batches/{batch_id}").json())

    def cancel_batch(self, batch_id: str, *, reason: str | None = None) -> dict[str, Any]:
        """Cancel every job of the batch not yet ended: ``{"applied": n, "skipped": m}``."""
        body = {"reason": reason} if reason else None
        return dict(self.request("POST", f"/api/v1/batches/{batch_id}/cancel", json=body).json())

    def restart_batch(self, batch_id: str, *, reason: str | None = None) -> dict[str, Any]:
        """Run the batch's failed and canceled jobs again: ``{"applied": n, "skipped": m}``."""
        body = {"reason": reason} if reason else None
        return dict(self.request("POST", f"/api/v1/batches/{batch_id}/restart", json=body).json())

    def batch_updates(
        self, batch_id: str, *, timeout: float | None = None, channels: Sequence[str] = CHANNELS
    ) -> Iterator[BatchSnapshot]:
        """The batch's snapshot now and each time it changes (coalesced by the server), ending
        after the terminal one; channels and TimeoutError as for :meth:`updates`."""
        followed = Followed(f"/api/v1/batches/{batch_id}", BatchSnapshot.from_json, batch_id, "batch")
        yield from self._updates(followed, timeout, channels)

    def wait_batch(
        self, batch_id: str, *, timeout: float | None = None, channels: Sequence[str] = CHANNELS
    ) -> BatchSnapshot:
        """Block until every job of the batch has ended; returns the batch's terminal snapshot."""
        last: BatchSnapshot | None = None
        for snap in self.batch_updates(batch_id, timeout=timeout, channels=channels):
            last = snap
        assert last is not None
        return last

    # --- following a job -------------------------------------------------------------------------

    def updates(
        self, job_id: str, *, timeout: float | None = None, channels: Sequence[str] = CHANNELS
    ) -> Iterator[Snapshot]:
        """Yield the job's snapshot now and each time it changes, ending after the terminal one.

        Follows Server-Sent Events; where they are not served, long polls; where
        that is not served either, polls with backoff (0.5 s growing to 5 s).
        Raises TimeoutError after ``timeout`` seconds.
        """
        yield from self._updates(
            Followed(f"/api/v1/jobs/{job_id}", Snapshot.from_json, job_id), timeout, channels
        )

    def _updates(self, followed: Followed[T], timeout: float | None, channels: Sequence[str]) -> Iterator[T]:
        """A job's or a batch's snapshots, as :meth:`updates` describes."""
        deadline = Deadline(timeout, followed.ident, followed.kind)
        last = followed.parse(self.request("GET", followed.base).json())
        deadline.status = last.status
        yield last
        followers = {"sse": self._follow_sse, "long_poll": self._follow_long_poll, "poll": self._follow_poll}
        for channel in channels:
            if last.is_terminal:
                return
            try:
                for snap in followers[channel](followed, last.seq, deadline):
                    if snap.seq > last.seq:
                        last, deadline.status = snap, snap.status
                        yield snap
                        if snap.is_terminal:
                            return
            except ChannelUnavailable:
                continue
        if not last.is_terminal:
            raise ConveyorAPIError(
                0, f"no channel could follow {followed.what} (tried {', '.join(channels)})"
            )

    def wait(
        self, job_id: str, *, timeout: float | None = None, channels: Sequence[str] = CHANNELS
    ) -> Snapshot:
        """Block until the job ends; returns its terminal snapshot (TimeoutError after ``timeout``)."""
        last: Snapshot | None = None
        for snap in self.updates(job_id, timeout=timeout, channels=channels):
            last = snap
        assert last is not None
        return last

    def _follow_sse(self, followed: Followed[T], after: int, deadline: Deadline) -> Iterator[T]:
        failures = 0
        while True:
            deadline.check()
            read = deadline.left(STREAM_READ_TIMEOUT) or 0.001
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
            try:
                with self._http.stream(
                    "GET",
                    f"{followed.base}/stream",
                    headers=headers,
                    timeout=httpx.Timeout(10.0, read=read),
                ) as response:
                    if response.status_code == 204:
                        return  # the server has nothing after `after`: we already have the end
                    if response.status_code >= 400:
                        response.read()
                    refuse_stream(response)
                    parser = EventParser()
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is None:
                            deadline.check()  # heartbeats keep a quiet stream's reads short
                            continue
                        snap = followed.parse(json.loads(event.data))
                        failures, after = 0, snap.seq
                        yield snap
                        if snap.is_terminal:
                            return
            except (*NOT_SENT, *MAYBE_SENT):
                failures += 1
                if failures > self.retries:
                    raise ChannelUnavailable("SSE keeps failing") from None
                time.sleep(min(0.25 * 2**failures, 5.0, deadline.left(5.0)))
            # A stream that ended without the terminal snapshot (a proxy's time limit, Lambda's
            # one-batch streams) is simply resumed from the last seq.

    def _follow_long_poll(self, followed: Followed[T], after: int, deadline: Deadline) -> Iterator[T]:
        while True:
            deadline.check()
            wait = max(1, int(deadline.left(LONG_POLL_SECONDS)))
            try:
                response = self.request(
                    "GET",
                    f"{followed.base}/poll",
                    params={"since": after, "timeout": wait},
                    timeout=httpx.Timeout(10.0, read=wait + 15.0),
                )
            except ConveyorAPIError as exc:
                if channel_unserved(exc):
                    raise ChannelUnavailable(f"long poll answered {exc.status_code}") from None
                raise
            snap = followed.parse(response.json())
            if snap.seq > after:
                after = snap.seq
                yield snap

    def _follow_poll(self, followed: Followed[T], after: int, deadline: Deadline) -> Iterator[T]:
        delay = 0.5
        while True:
            snap = followed.parse(self.request("GET", followed.base).json())
            if snap.seq > after:
                after = snap.seq
                delay = 0.5
                yield snap
            deadline.check()
            time.sleep(deadline.left(delay))
            delay = min(delay * 1.5, MAX_POLL_DELAY)
