"""Tasks the history tests run (loaded through CONVEYOR_TASK_MODULES in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from jobs.progress_protocol import ProgressReporter
from jobs.tasks import task


class FailPayload(BaseModel):
    order: int = 123


@task(queue="default", timeout=30, retries=2)
def fails_with_retries(payload: FailPayload) -> None:
    """Always fails; RQ retries it twice at once, so it ends failed after three attempts."""
    raise ValueError(f"attempt failed for order {payload.order}")


class BigPayload(BaseModel):
    size: int = Field(default=100_000, ge=0, le=20_000_000)


@task(queue="default", timeout=30)
def big_result(payload: BigPayload) -> dict[str, Any]:
    """Return a result of about ``size`` bytes of JSON."""
    return {"blob": "x" * payload.size, "size": payload.size}


class LeakyPayload(BaseModel):
    fail: bool = False


@task(queue="default", timeout=30)
def leaky(payload: LeakyPayload, progress: ProgressReporter) -> dict[str, Any]:
    """Put secrets everywhere a payload can surface: result, progress message, error."""
    progress.update(50, message="connecting with password=hunter2")
    progress.flush()
    if payload.fail:
        raise RuntimeError("login failed: password=hunter2 token=tok-999 at postgresql://u:pw-777@db/x")
    return {"token": "tok-999", "nested": {"client_secret": "sec-qz9"}, "value": 42}


class NulPayload(BaseModel):
    fail: bool = False


@task(queue="default", timeout=30)
def nul_bytes(payload: NulPayload, progress: ProgressReporter) -> dict[str, Any]:
    """Put NUL characters (binary data, C-library messages) everywhere a task's output surfaces."""
    progress.update(50, message="read\x00half")
    progress.flush()
    if payload.fail:
        raise RuntimeError("libfoo: bad byte \x00 at 7")
    return {"bytes": "ab\x00cd", "key\x00": ["\x00"]}


# Secret-shaped values in free text (no secret-looking key around them): see test_redaction_surfaces.
FREE_TEXT_SECRETS = {
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.c2lnbmF0dXJlLXZhbHVlLTQ0Mg",
    "github": "ghp_" + "Zq9" * 12,
    "aws": "AKIAZQ9ZQ9ZQ9ZQ9ZQ9Z",
    "slack": "xoxb-1234567890-zq9zq9zq9zq9",
    "url": "pw-free-555",
}


class ChattyPayload(BaseModel):
    fail: bool = False
    note: str = ""


@task(queue="default", timeout=30)
def chatty(payload: ChattyPayload, progress: ProgressReporter) -> dict[str, Any]:
    """Let secrets slip into ordinary text: a message field, a progress message, an exception."""
    s = FREE_TEXT_SECRETS
    progress.update(50, message=f"calling with Bearer {s['jwt']} as {s['aws']}")
    progress.flush()
    if payload.fail:
        raise RuntimeError(f"push failed with {s['github']} via https://bot:{s['url']}@git.example")
    return {"message": "password=hunter2", "log": [f"slack {s['slack']}"], "ok": "passenger author"}
