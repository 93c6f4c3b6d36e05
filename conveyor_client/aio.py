"""The asyncio client: the same calls as `Client`, awaitable."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import httpx

from conveyor_client.client import (
    CHANNELS,
    LONG_POLL_SECONDS,
    MAX_POLL_DELAY,
    STREAM_READ_TIMEOUT,
    Deadline,
    Followed,
    T,
    channel_unserved,
    limits_path,
    list_params,
    refuse_stream,
    submit_body,
)
from conveyor_client.errors import (
    MAYBE_SENT,
    NOT_SENT,
    RETRY_STATUSES,
    ChannelUnavailable,
    ConveyorAPIError,
    is_safe_to_repeat,
    raise_for_error,
)
from conveyor_client.log_lines import LogLine, LogPage
from conveyor_client.snapshot import BatchCreated, BatchSnapshot, Page, Snapshot
from conveyor_client.sse import EventParser


class AsyncClient:
    """An asyncio Conveyor client (see `Client` for the retry rules)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries = retries
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        delay = 0.25
        safe = is_safe_to_repeat(method, httpx.Headers(kwargs.get("headers") or {}))
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self._http.request(method, path, **kwargs)
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
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def submit(
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
        """Submit a job (always with an Idempotency-Key; see `Client.submit`)."""
        headers = {"Idempotency-Key": idempotency_key or f"cvc-{uuid.uuid4()}"}
        body = submit_body(task, payload, queue, timeout, run_at, delay, depends_on)
        response = await self.request("POST", "/api/v1/jobs", json=body, headers=headers)
        return Snapshot.from_json(response.json())

    async def get(self, job_id: str) -> Snapshot:
        return Snapshot.from_json((await self.request("GET", f"/api/v1/jobs/{job_id}")).json())

    async def list_jobs(
        self,
        *,
        status: str | list[str] | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        params = list_params(status, task, queue, limit, cursor)
        data = (await self.request("GET", "/api/v1/jobs", params=params)).json()
        return Page(items=[Snapshot.from_json(i) for i in data["items"]], next_cursor=data.get("next_cursor"))

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        return list((await self.request("GET", f"/api/v1/jobs/{job_id}/events")).json()["items"])

    async def tasks(self) -> list[dict[str, Any]]:
        return list((await self.request("GET", "/api/v1/tasks")).json())

    async def limits(self, tenant: str) -> dict[str, Any]:
        """A tenant's limits in force (an admin key: its own tenant; an operator key: any)."""
        return dict((await self.request("GET", limits_path(tenant))).json())

    async def set_limits(self, tenant: str, **changes: int | None) -> dict[str, Any]:
        """Change the named limits (None: back to the default); an operator key only."""
        return dict((await self.request("PUT", limits_path(tenant), json=changes)).json())

    async def logs(self, job_id: str, *, after: int = 0, limit: int = 200) -> LogPage:
        """A page of the job's log (see `Client.logs`)."""
        params = {"after": after, "limit": limit}
        response = await self.request("GET", f"/api/v1/jobs/{job_id}/logs", params=params)
        return LogPage.from_json(response.json())

    async def follow_logs(
        self, job_id: str, *, after: int = 0, timeout: float | None = None
    ) -> AsyncIterator[LogLine]:
        """The job's log lines as they are written, until its end (see `Client.follow_logs`)."""
        deadline = Deadline(timeout, job_id)
        try:
            async for line in self._follow_log_stream(job_id, after, deadline):
                after = line.seq
                yield line
            return
        except ChannelUnavailable:
            pass
        while True:
            ended = (await self.get(job_id)).is_terminal
            page = await self.logs(job_id, after=after, limit=1000)
            for line in page.items:
                after = line.seq
                yield line
            if page.next_cursor is not None:
                continue
            if ended:
                return
            deadline.check()
            await asyncio.sleep(deadline.left(0.5))

    async def _follow_log_stream(self, job_id: str, after: int, deadline: Deadline) -> AsyncIterator[LogLine]:
        failures = 0
        while True:
            deadline.check()
            read = deadline.left(STREAM_READ_TIMEOUT) or 0.001
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
            try:
                async with self._http.stream(
                    "GET",
                    f"/api/v1/jobs/{job_id}/logs/stream",
                    headers=headers,
                    timeout=httpx.Timeout(10.0, read=read),
                ) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code >= 400:
                        await response.aread()
                    refuse_stream(response)
                    parser = EventParser()
                    async for text in response.aiter_lines():
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
                await asyncio.sleep(min(0.25 * 2**failures, 5.0, deadline.left(5.0)))

    async def cancel(self, job_id: str, *, reason: str | None = None) -> Snapshot:
        """Cancel a job (a running one is asked to stop; it may still show `started` for a moment)."""
        return await self._control(job_id, "cancel", reason)

    async def pause(self, job_id: str) -> Snapshot:
        return await self._control(job_id, "pause")

    async def resume(self, job_id: str) -> Snapshot:
        return await self._control(job_id, "resume")

    async def restart(self, job_id: str, *, reason: str | None = None) -> Snapshot:
        return await self._control(job_id, "restart", reason)

    async def _control(self, job_id: str, action: str, reason: str | None = None) -> Snapshot:
        body = {"reason": reason} if reason else None
        response = await self.request("POST", f"/api/v1/jobs/{job_id}/{action}", json=body)
        return Snapshot.from_json(response.json())

    async def updates(
        self, job_id: str, *, timeout: float | None = None, channels: Sequence[str] = CHANNELS
    ) -> AsyncIterator[Snapshot]:
        """Yield the job's snapshot now and each time it changes, ending after the terminal one."""
        followed = Followed(f"/api/v1/jobs/{job_id}", Snapshot.from_json, job_id)
        async for snap in self._updates(followed, timeout, channels):
            yield snap

    async def _updates(
        self, followed: Followed[T], timeout: float | None, channels: Sequence[str]
    ) -> AsyncIterator[T]:
        deadline = Deadline(timeout, followed.ident, followed.kind)
        last = followed.parse((await self.request("GET", followed.base)).json())
        deadline.status = last.status
        yield last
        followers = {"sse": self._follow_sse, "long_poll": self._follow_long_poll, "poll": self._follow_poll}
        for channel in channels:
            if last.is_terminal:
                return
            try:
                async for snap in followers[channel](followed, last.seq, deadline):
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

    async def wait(
        self, job_id: str, *, timeout: float | None = None, channels: Sequence[str] = CHANNELS
    ) -> Snapshot:
        last: Snapshot | None = None
        async for snap in self.updates(job_id, timeout=timeout, channels=channels):
            last = snap
        assert last is not None
        return last

    # --- batches ---------------------------------------------------------------------------------

    async def submit_batch(
        self,
        jobs: Sequence[dict[str, Any]],
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> BatchCreated:
        """Submit many jobs in one request, all or none (see `Client.submit_batch`)."""
        headers = {"Idempotency-Key": idempotency_key or f"cvc-{uuid.uuid4()}"}
        body: dict[str, Any] = {"jobs": list(jobs), "tags": list(tags)}
        if name:
            body["name"] = name
        data = (await self.request("POST", "/api/v1/batches", json=body, headers=headers)).json()
        return BatchCreated(batch_id=data["batch_id"], job_ids=list(data["job_ids"]))

    async def get_batch(self, batch_id: str) -> BatchSnapshot:
        return BatchSnapshot.from_json((await self.request("GET", f"/api/v1/batches/{batch_id}")).json())

    async def batch_updates(
        self, batch_id: str, *, timeout: float | None = None, channels: Sequence[str] = CHANNELS
    ) -> AsyncIterator[BatchSnapshot]:
        """The batch's snapshot now and each time it changes, ending after the terminal one."""
        followed = Followed(f"/api/v1/batches/{batch_id}", BatchSnapshot.from_json, batch_id, "batch")
        async for snap in self._updates(followed, timeout, channels):
            yield snap

    async def wait_batch(
        self, batch_id: str, *, timeout: float | None = None, channels: Sequence[str] = CHANNELS
    ) -> BatchSnapshot:
        last: BatchSnapshot | None = None
        async for snap in self.batch_updates(batch_id, timeout=timeout, channels=channels):
            last = snap
        assert last is not None
        return last

    async def _follow_sse(self, followed: Followed[T], after: int, deadline: Deadline) -> AsyncIterator[T]:
        failures = 0
        while True:
            deadline.check()
            read = deadline.left(STREAM_READ_TIMEOUT) or 0.001
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
            try:
                async with self._http.stream(
                    "GET",
                    f"{followed.base}/stream",
                    headers=headers,
                    timeout=httpx.Timeout(10.0, read=read),
                ) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code >= 400:
                        await response.aread()
                    refuse_stream(response)
                    parser = EventParser()
                    async for line in response.aiter_lines():
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
                await asyncio.sleep(min(0.25 * 2**failures, 5.0, deadline.left(5.0)))

    async def _follow_long_poll(
        self, followed: Followed[T], after: int, deadline: Deadline
    ) -> AsyncIterator[T]:
        while True:
            deadline.check()
            wait = max(1, int(deadline.left(LONG_POLL_SECONDS)))
            try:
                response = await self.request(
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

    async def _follow_poll(self, followed: Followed[T], after: int, deadline: Deadline) -> AsyncIterator[T]:
        delay = 0.5
        while True:
            snap = followed.parse((await self.request("GET", followed.base)).json())
            if snap.seq > after:
                after = snap.seq
                delay = 0.5
                yield snap
            deadline.check()
            await asyncio.sleep(deadline.left(delay))
            delay = min(delay * 1.5, MAX_POLL_DELAY)
