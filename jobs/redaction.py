"""Secrets never reach SQL, logs or pages: values of secret-looking keys are replaced.

Three entry points, one rule (`CONVEYOR_REDACT_KEYS`, matched case-insensitively,
ignoring `_`, `-` and spaces, anywhere in a key):

- :func:`redact` for JSON data (params, results, event data): a redacted copy.
- :func:`redact_text` for free text (error details, tracebacks, progress
  messages, log lines): `password=…`, `"token": "…"`, `Authorization: Bearer …`
  and credentials in URLs are replaced.
- :func:`install_log_redaction` for logs: every record's message (and
  traceback) is passed through :func:`redact_text`.

Data is redacted where it is produced (the submit path for params, the
work-horse for results and errors) and again wherever it is rendered (API,
pages), so a key added to the list later also hides what was stored before.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
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


@lru_cache(maxsize=8)
def _text_patterns(markers: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    # A key containing a marker, allowing the separators _normalise ignores between its letters.
    words = "|".join("[-_ ]?".join(re.escape(ch) for ch in marker) for marker in markers if marker)
    key = rf"[\w-]*(?:{words})[\w-]*"
    return (
        # "key": "value"  /  'key': 'value'  (JSON or a Python repr)
        re.compile(rf"""(?i)(["']{key}["']\s*:\s*)(["'])(?:\\.|(?!\2).)*\2"""),
        # key=value  /  key: value  (query strings, headers, log lines); stops at a separator
        re.compile(rf"""(?i)(\b{key}\b\s*[=:]\s*)(?!\[REDACTED\])(?:Bearer\s+|Basic\s+)?[^\s&,;'"}}\]]+"""),
        # scheme://user:password@host
        re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(@)"),
        # a bare bearer token
        re.compile(r"(?i)(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    )


def redact_text(text: str, markers: list[str] | None = None) -> str:
    """``text`` with the values of secret-looking keys, URL passwords and bearer tokens replaced."""
    if not text:
        return text
    quoted, keyed, url, bearer = _text_patterns(tuple(markers or get_settings().redact_keys))
    text = quoted.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}{m.group(2)}", text)
    text = keyed.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = url.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)
    return bearer.sub(lambda m: f"{m.group(1)}{REDACTED}", text)


def _redact_record(record: logging.LogRecord) -> None:
    # Arguments first, each in place: some formatters read ``record.args`` itself (uvicorn's access
    # formatter unpacks its five), so they must keep their shape whenever that is enough.
    if isinstance(record.args, tuple) and record.args:
        record.args = tuple(redact_text(a) if isinstance(a, str) else a for a in record.args)
    try:
        message = record.getMessage()
    except Exception:  # a malformed record is logging's problem, not ours
        return
    cleaned = redact_text(message)
    # A secret the arguments alone did not show: flatten the message. Not uvicorn's access line:
    # its formatter needs the arguments, and its only free text (the path) is redacted above.
    if cleaned != message and record.name != "uvicorn.access":
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text)


def install_log_redaction() -> None:
    """Redact every log record this process creates, whichever logger or handler it goes to.

    Installed as a record factory (RQ and uvicorn bring their own handlers, so a
    handler filter would miss them). Idempotent.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "conveyor_redacting", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        _redact_record(record)
        return record

    redacting_factory.conveyor_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)
