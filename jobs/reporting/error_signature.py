"""Error signatures: one failure's message with its variable parts folded, so alike errors group.

    ValueError: user 4211 not found in 'eu-west-1' (request 9f1c…)
    -> ValueError: user <n> not found in '<s>' (request <id>)

Computed once, when the recorder writes a failure to SQL (`jobs.reporting.error_signature`
column), so "top errors" is a plain indexed GROUP BY on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import re

MAX_LENGTH = 255

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # quoted values first: their content is data, whatever it looks like
    (re.compile(r"'(?:\\.|[^'\\])*'"), "'<s>'"),
    (re.compile(r'"(?:\\.|[^"\\])*"'), '"<s>"'),
    (re.compile(r"`[^`]*`"), "`<s>`"),
    # identifiers
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<id>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "<email>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"), "<time>"),
    (re.compile(r"\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def error_signature(error_type: str | None, detail: str | None) -> str | None:
    """``Type: detail`` with quoted values, ids, hex, e-mails, times and numbers folded."""
    if error_type is None:
        return None
    text = (detail or "").strip().splitlines()[0] if (detail or "").strip() else ""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    signature = f"{error_type}: {text.strip()}" if text.strip() else error_type
    return signature[:MAX_LENGTH]
