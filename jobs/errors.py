"""Domain errors. Each carries a message a person can act on; the API maps them to status codes."""

from __future__ import annotations

from typing import Any


class ConveyorError(Exception):
    """Base class; ``status_code`` is the HTTP status the API answers with."""

    status_code = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class UnknownTask(ConveyorError):
    status_code = 404

    def __init__(self, task: str, known: list[str]) -> None:
        super().__init__(
            f"Unknown task {task!r}. Known tasks: {', '.join(known) or '(none)'}.", known_tasks=known
        )


class InvalidPayload(ConveyorError):
    status_code = 422

    def __init__(self, task: str, errors: list[dict[str, Any]], message: str | None = None) -> None:
        super().__init__(message or f"The payload does not fit task {task!r}'s schema.", errors=errors)


class InvalidRequest(ConveyorError):
    status_code = 422


class IdempotencyConflict(ConveyorError):
    status_code = 422


class JobNotFound(ConveyorError):
    status_code = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(f"No job with id {job_id!r}.")


class IllegalTransition(ConveyorError):
    status_code = 409


class ServiceUnavailable(ConveyorError):
    status_code = 503


class ResultNotReady(ConveyorError):
    status_code = 409


class ResultGone(ConveyorError):
    status_code = 410


class Forbidden(ConveyorError):
    status_code = 403


class TooManyRequests(ConveyorError):
    """Over a rate limit or a quota (issue 13); ``headers`` go out with the 429 (Retry-After...)."""

    status_code = 429

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.headers = headers or {}


class TooLarge(ConveyorError):
    """A request over a size the deployment caps (a batch's jobs): 413, naming the cap."""

    status_code = 413
