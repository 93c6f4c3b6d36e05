"""Values every database can store: text never holds a NUL character.

PostgreSQL refuses NUL (U+0000) in `text` columns and in JSONB (as ``\\u0000``),
while SQLite stores it; binary data and C-library messages put it in task
results, errors and progress messages. One refused value used to stall the
recorder, so values are made storable where they enter the journal
(:func:`storable_json`, called by the live store for every change it
journals, and by the result stash): each NUL becomes U+FFFD (the Unicode
replacement character), in strings and in mapping keys, the same on every
database, so what Redis shows and what SQL keeps agree.
"""

from __future__ import annotations

import json
from typing import Any

NUL = "\x00"
REPLACEMENT = "\ufffd"

# How `json.dumps` writes a NUL (it always escapes control characters, ensure_ascii or not).
_ESCAPED_NUL = "\\u0000"


def storable_text(text: str) -> str:
    """``text`` with every NUL replaced by U+FFFD."""
    return text.replace(NUL, REPLACEMENT) if NUL in text else text


def storable(value: Any) -> Any:
    """A copy of JSON data with every NUL in its strings and keys replaced by U+FFFD."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {(storable_text(k) if isinstance(k, str) else k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def storable_json(value: Any, **dumps: Any) -> str:
    """``json.dumps(value, **dumps)``, NUL-free.

    The common case (no NUL anywhere) costs one substring search of the text
    already encoded; only a value that held a NUL is walked and encoded again.
    """
    text = json.dumps(value, **dumps)
    if _ESCAPED_NUL not in text:
        return text
    return json.dumps(storable(value), **dumps)
