"""Secrets never reach SQL, logs or pages: secret keys' values and secret-shaped text are replaced.

One rule for keys (`CONVEYOR_REDACT_KEYS`): a key is split into words at
`_`, `-`, `.`, spaces and camelCase humps (`clientSecret`, `Client-Secret` and
`CLIENT_SECRET` are all `client secret`), and it names a secret when one word,
or a run of adjacent words written together, *is* a listed marker: `auth`
matches `auth`, `x_auth` and `authToken` but not `author`; `pass` matches
`db_pass` but not `passenger`; `apikey` matches `api_key` and `APIKey`. A key
whose last word is a measure or a setting (`session_count`, `password_length`,
`token_type`) names no secret: its value is a number or a word, not the secret.

Entry points:

- :func:`redact` for JSON data (params, results, event data): a copy with
  the values of secret keys replaced and every string passed through
  :func:`redact_text`, so ``{"message": "password=hunter2"}`` is caught too.
- :func:`redact_text` for free text (error details, tracebacks, progress
  messages, log lines): `key=value`, `key: value` and `"key": "value"` with a
  secret key; `Bearer …`; JWTs; AWS access key ids; GitHub, GitLab and Slack
  tokens; and passwords in URLs are replaced.
- :func:`install_log_redaction` for logs: every record's message (and
  traceback) is passed through :func:`redact_text`.

Data is redacted where it is produced (the submit path for params, the
work-horse for results, errors and progress messages, the worker for RQ's own
copy of the exception) and again wherever it is rendered (API, pages), so a
key added to the list later also hides what was stored before.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

from jobs.settings import get_settings

REDACTED = "[REDACTED]"

# A key ending in one of these words describes a secret (its size, kind, lifetime), it is not one.
NOT_SECRET_LAST_WORDS = frozenset(
    {
        "count", "length", "len", "size", "total", "num", "number", "limit", "max", "min", "ttl",
        "timeout", "type", "kind", "expiry", "expires", "enabled", "required", "method", "name",
        "mode", "policy", "format", "version",
    }
)  # fmt: skip

_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def key_words(key: str) -> tuple[str, ...]:
    """The words of a key, lower case: `X-Auth-Token`, `xAuthToken`, `X_AUTH_TOKEN` -> (x, auth, token)."""
    return tuple(w for w in _NON_WORD.split(_HUMP.sub(" ", key).lower()) if w)


def _normalise(marker: str) -> str:
    return "".join(key_words(marker))


@lru_cache(maxsize=8)
def _marker_set(markers: tuple[str, ...]) -> frozenset[str]:
    return frozenset(n for m in markers if (n := _normalise(m)))


@lru_cache(maxsize=4096)
def _is_secret(key: str, markers: frozenset[str]) -> bool:
    words = key_words(key)
    if not words or (len(words) > 1 and words[-1] in NOT_SECRET_LAST_WORDS):
        return False
    for start in range(len(words)):
        joined = ""
        for word in words[start:]:
            joined += word
            if joined in markers:
                return True
    return False


def _markers(markers: list[str] | None) -> frozenset[str]:
    return _marker_set(tuple(markers or get_settings().redact_keys))


def is_secret_key(key: str, markers: list[str] | None = None) -> bool:
    """Whether a mapping key names a secret (`api_key`, `X-Auth-Token`, `clientSecret`, ...)."""
    return _is_secret(key, _markers(markers))


def redact(value: Any, markers: list[str] | None = None) -> Any:
    """A copy of ``value`` with every secret key's value replaced and secret-shaped text redacted."""
    return _redact(value, _markers(markers))


def _redact(value: Any, markers: frozenset[str]) -> Any:
    if isinstance(value, str):
        return _redact_text(value, markers)
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _is_secret(k, markers) else _redact(v, markers))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v, markers) for v in value]
    return value


# Secrets recognisable by their shape alone, whatever precedes them.
_SHAPES = re.compile(
    r"""
      \beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*   # a JWT (header.payload.signature)
    | \b(?:AKIA|ASIA)[A-Z0-9]{16}\b                                   # an AWS access key id
    | \b(?:gh[pousr]_[A-Za-z0-9]{20,255}|github_pat_[A-Za-z0-9_]{20,255})\b  # GitHub tokens
    | \bglpat-[A-Za-z0-9_-]{20,}                                      # a GitLab personal token
    | \bxox[abposr]-[A-Za-z0-9-]{10,}                                 # a Slack token
    """,
    re.VERBOSE,
)
# scheme://user:password@host
_URL_PASSWORD = re.compile(r"(?i)((?<![a-z0-9+.-])[a-z][a-z0-9+.-]*+://[^\s:/@]++:)[^\s@/]++(@)")
# A bare bearer token.
_BEARER = re.compile(r"(?i)(\bBearer\s+)(?!\[REDACTED\])[A-Za-z0-9._~+/=-]{8,}")
# A key (up to three space-separated words; a command-line flag's dashes before it), an optional
# closing quote, and `=` or `:` (not `==`, not `://`). It starts only where a word starts, and its
# quantifiers are possessive: linear however long the words.
_KEY_SEP = re.compile(
    r"""(?<![\w.-])-{0,2}(?P<key>[A-Za-z_][\w.-]*+(?:[ ][A-Za-z_][\w.-]*+){0,2})(?P<q>["']?)"""
    r"""[ \t]*+[=:](?![=/])[ \t]*+"""
)
_QUOTED = re.compile(r""""(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'""")
_SCHEME = re.compile(r"(?i)(?:Bearer|Basic|Token|Digest)[ \t]++[^\s&,;'\"}\]]++")
_PLAIN = re.compile(r"""[^\s&,;'"{}\[\]]++""")


def _key_is_secret(key: str, markers: frozenset[str]) -> bool:
    """The key before a separator in free text: its last word, or its last two words as one.

    So `the password: x` and `private key: x` count, while `token file: x` does not.
    """
    words = key.split(" ")
    if _is_secret(words[-1], markers):
        return True
    return len(words) > 1 and _normalise(words[-2] + words[-1]) in markers


def _redact_pairs(text: str, markers: frozenset[str]) -> str:
    out: list[str] = []
    pos = 0
    while (m := _KEY_SEP.search(text, pos)) is not None:
        end = m.end()
        if not _key_is_secret(m.group("key"), markers):
            out.append(text[pos:end])
            pos = end
            continue
        out.append(text[pos:end])
        if text.startswith(REDACTED, end):
            pos = end + len(REDACTED)
            out.append(REDACTED)
            continue
        value = _QUOTED.match(text, end) or _SCHEME.match(text, end) or _PLAIN.match(text, end)
        if value is None:  # nothing to hide here (an object or a list follows: its keys are scanned)
            pos = end
            continue
        raw = value.group(0)
        out.append(f"{raw[0]}{REDACTED}{raw[0]}" if raw[0] in "\"'" else REDACTED)
        pos = value.end()
    out.append(text[pos:])
    return "".join(out)


def _redact_text(text: str, markers: frozenset[str]) -> str:
    if not text:
        return text
    text = _SHAPES.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)
    if "=" in text or ":" in text:
        text = _redact_pairs(text, markers)
    return _BEARER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)


def redact_text(text: str, markers: list[str] | None = None) -> str:
    """``text`` with secret values (after secret keys, in URLs, bearer tokens, token shapes) replaced."""
    return _redact_text(text, _markers(markers))


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
