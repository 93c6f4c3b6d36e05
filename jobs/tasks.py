"""The task registry: `@task` turns one typed function into a job Conveyor can run.

    class ResizePayload(BaseModel):
        url: str
        width: int = Field(800, ge=1)

    @task(queue="default", timeout=300, retries=2)
    def resize(payload: ResizePayload, progress: ProgressReporter) -> dict:
        ...

The payload model comes from the first parameter's annotation; submissions
are validated against it. Task modules are imported by name
(`CONVEYOR_TASK_MODULES`), so the API knows tasks without importing worker code; a task
annotates its progress with `jobs.progress_protocol.ProgressReporter`, so importing it pulls
in none of the worker either.
"""

from __future__ import annotations

import importlib
import inspect
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from jobs.errors import InvalidPayload, UnknownTask
from jobs.queues.retries import RetryPolicy
from jobs.settings import get_settings

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TaskSpec:
    """A registered task and its options; None options fall back to the settings."""

    name: str
    func: Callable[..., Any]
    payload_model: type[BaseModel]
    queue: str | None = None
    timeout: int | None = None
    retries: int = 0
    retry_intervals: tuple[int, ...] = ()
    retry_backoff: float | None = None
    retry_backoff_max: float | None = None
    retry_jitter: float | None = None
    result_ttl: int | None = None
    description: str = ""
    takes_progress: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)
    # Caps (issue 13): the longest timeout a submission may ask for, and how many of this task
    # may run at once over all workers; CONVEYOR_TASK_LIMITS overrides them (jobs/access/limits.py).
    max_timeout: int | None = None
    max_running: int | None = None

    def validate(self, payload: Any) -> BaseModel:
        """The payload as the task's model, or InvalidPayload with field errors."""
        try:
            return self.payload_model.model_validate(payload)
        except ValidationError as exc:
            errors = [
                {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
                for err in exc.errors(include_url=False, include_context=False, include_input=False)
            ]
            raise InvalidPayload(self.name, errors) from None

    @property
    def is_async(self) -> bool:
        """An ``async def`` task: a worker child runs many of these at once on its event loop."""
        return inspect.iscoroutinefunction(self.func)

    def schema(self) -> dict[str, Any]:
        return self.payload_model.model_json_schema()

    @property
    def retry_policy(self) -> RetryPolicy:
        """The task's retry policy, with the settings' defaults for what it leaves open."""
        settings = get_settings()
        return RetryPolicy(
            retries=self.retries,
            intervals=self.retry_intervals,
            backoff=self.retry_backoff or settings.retry_backoff,
            backoff_max=self.retry_backoff_max or settings.retry_backoff_max,
            jitter=settings.retry_jitter if self.retry_jitter is None else self.retry_jitter,
        )


_registry: dict[str, TaskSpec] = {}
_loaded: set[str] = set()
_lock = threading.Lock()


def task(
    func: F | None = None,
    *,
    name: str | None = None,
    queue: str | None = None,
    timeout: int | None = None,
    retries: int = 0,
    retry_intervals: tuple[int, ...] | list[int] = (),
    retry_backoff: float | None = None,
    retry_backoff_max: float | None = None,
    retry_jitter: float | None = None,
    result_ttl: int | None = None,
    tags: tuple[str, ...] | list[str] = (),
    max_timeout: int | None = None,
    max_running: int | None = None,
) -> Any:
    """Register a task. Usable bare (`@task`) or with options (`@task(queue="reports")`).

    A failed attempt is retried ``retries`` times: after ``retry_intervals``
    seconds when given, else with exponential backoff from ``retry_backoff``
    seconds (doubling, capped at ``retry_backoff_max``); every interval is
    spread by ±``retry_jitter`` (a fraction). Unset values come from the settings.
    ``max_timeout`` caps the `timeout` a submission may ask for; ``max_running`` caps how many
    of this task run at once over all workers (see jobs/access/limits.py).
    """

    def register(fn: F) -> F:
        spec = _spec_for(
            fn,
            name=name or fn.__name__,
            queue=queue,
            timeout=timeout,
            retries=retries,
            retry_intervals=tuple(retry_intervals),
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            retry_jitter=retry_jitter,
            result_ttl=result_ttl,
            tags=tuple(tags),
            max_timeout=max_timeout,
            max_running=max_running,
        )
        existing = _registry.get(spec.name)
        if existing is not None and existing.func is not fn and _qualname(existing.func) != _qualname(fn):
            raise ValueError(f"task name {spec.name!r} is already registered by {_qualname(existing.func)}")
        _registry[spec.name] = spec
        return fn

    return register(func) if func is not None else register


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _spec_for(fn: Callable[..., Any], **options: Any) -> TaskSpec:
    params = list(inspect.signature(fn).parameters.values())
    hints = typing.get_type_hints(fn)
    if not params:
        raise TypeError(f"task {fn.__name__} must take a payload parameter annotated with a pydantic model")
    model = hints.get(params[0].name)
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        raise TypeError(
            f"task {fn.__name__}: annotate its first parameter with a pydantic BaseModel subclass"
        )
    RetryPolicy(  # refuses bad retry options at import time, with a clear message
        retries=options["retries"],
        intervals=options["retry_intervals"],
        backoff=options["retry_backoff"] or 1.0,
        backoff_max=options["retry_backoff_max"] or 1.0,
        jitter=options["retry_jitter"] or 0.0,
    )
    doc = inspect.getdoc(fn) or ""
    return TaskSpec(
        func=fn,
        payload_model=model,
        description=doc.split("\n\n")[0],
        takes_progress=any(p.name == "progress" for p in params[1:]),
        **options,
    )


def load_tasks() -> dict[str, TaskSpec]:
    """Import the configured task modules (once each) and return the registry."""
    modules = get_settings().task_modules
    if not set(modules) <= _loaded:
        with _lock:
            for module in modules:
                if module not in _loaded:
                    importlib.import_module(module)
                    _loaded.add(module)
    return _registry


def task_of(func: Callable[..., Any]) -> TaskSpec:
    """The task registered for ``func`` (for decorators stacked on `@task`)."""
    for spec in _registry.values():
        if spec.func is func:
            return spec
    raise TypeError(f"{_qualname(func)} is not a task: put @task(...) directly under this decorator")


def get_task(name: str) -> TaskSpec:
    tasks = load_tasks()
    spec = tasks.get(name)
    if spec is None:
        raise UnknownTask(name, sorted(tasks))
    return spec
