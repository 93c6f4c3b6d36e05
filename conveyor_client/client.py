"""The synchronous client and the typed snapshot it returns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

TERMINAL = frozenset({"finished", "failed", "canceled"})


class ConveyorAPIError(Exception):
    """The API answered with an error status; ``detail`` is its human-readable message."""

    def __init__(self, status_code: int, detail: Any, body: Any = None) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.body = body


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@dataclass(frozen=True)
class Snapshot:
    """A job as the API reports it (the same shape on every channel)."""

    job_id: str
    task: str
    queue: str
    status: str
    progress: float | None
    message: str | None
    result: Any
    error: dict[str, str] | None
    attempt: int
    max_retries: int
    created_at: datetime | None
    enqueued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    updated_at: datetime | None
    eta_seconds: float | None
    seq: int
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(
            job_id=data["job_id"],
            task=data["task"],
            queue=data["queue"],
            status=data["status"],
            progress=data.get("progress"),
            message=data.get("message"),
            result=data.get("result"),
            error=data.get("error"),
            attempt=data.get("attempt", 1),
            max_retries=data.get("max_retries", 0),
            created_at=_ts(data.get("created_at")),
            enqueued_at=_ts(data.get("enqueued_at")),
            started_at=_ts(data.get("started_at")),
            ended_at=_ts(data.get("ended_at")),
            updated_at=_ts(data.get("updated_at")),
            eta_seconds=data.get("eta_seconds"),
            seq=data["seq"],
            raw=data,
        )


@dataclass(frozen=True)
class Page:
    items: list[Snapshot]
    next_cursor: str | None


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        body, detail = response.text, response.text or response.reason_phrase
    raise ConveyorAPIError(response.status_code, detail, body)


class Client:
    """A synchronous Conveyor client. Connection errors are retried with backoff."""

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
        """Send a request, retrying connection failures (not HTTP errors) with backoff."""
        delay = 0.25
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
                if attempt == self.retries:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            raise_for_error(response)
            return response
        raise AssertionError("unreachable")

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
        """Submit a job. Pass an ``idempotency_key`` to make retries of this call safe.

        ``run_at`` (an aware datetime) or ``delay`` (seconds) schedule it;
        ``depends_on`` makes it wait for those jobs to finish.
        """
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
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
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
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = [status] if isinstance(status, str) else status
        for name, value in (("task", task), ("queue", queue), ("cursor", cursor)):
            if value:
                params[name] = value
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

    def wait(self, job_id: str, *, timeout: float | None = None, interval: float = 0.5) -> Snapshot:
        """Poll until the job is terminal, backing off from ``interval`` to 5 s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = interval
        while True:
            snap = self.get(job_id)
            if snap.is_terminal:
                return snap
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError(f"job {job_id} is still {snap.status} after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
