"""Secrets never reach SQL, logs or pages: keys that look like secrets have their values replaced."""

from __future__ import annotations

from typing import Any

from jobs.settings import get_settings

REDACTED = "[REDACTED]"


def _normalise(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "").replace(" ", "")


def is_secret_key(key: str, markers: list[str] | None = None) -> bool:
    """Whether a mapping key names a secret (`api_key`, `X-Auth-Token`, `db_password`, ...)."""
    name = _normalise(key)
    return any(marker in name for marker in (markers or get_settings().redact_keys))


def redact(value: Any, markers: list[str] | None = None) -> Any:
    """A copy of ``value`` with every secret-looking key's value replaced, at any depth."""
    markers = markers or get_settings().redact_keys
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_key(k, markers) else redact(v, markers))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, markers) for v in value]
    return value
