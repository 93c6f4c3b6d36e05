"""Values every database can store, the same on SQLite and PostgreSQL.

PostgreSQL's `jsonb` and `text` refuse a NUL character (`\\u0000`) and a lone
UTF-16 surrogate, and JSON itself has no NaN/Infinity, while SQLite stores
them. Two rules follow:

- What a client submits is checked (:func:`find_unstorable`): a payload
  holding one of them is refused at submission (422 naming the field) on both
  databases, rather than accepted on one and a 500 on the other. Nesting is
  bounded too (``CONVEYOR_MAX_JSON_DEPTH``): parsing, validating and redacting
  are recursive, so a body nested a thousand levels deep would otherwise end
  in a RecursionError; :func:`nesting_exceeds` looks at the raw text before
  anything parses it.
- What a task produces (results, errors, progress messages: binary data and
  C-library messages carry NULs) is made storable where it enters the journal
  (:func:`storable_json`, called by the live store for every change it
  journals, and by the result stash): each NUL becomes U+FFFD (the Unicode
  replacement character), in strings and in mapping keys, so what Redis shows
  and what SQL keeps agree, and one value can no longer stall the recorder.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def nesting_exceeds(text: bytes | str, limit: int) -> bool:
    """Whether JSON ``text`` nests arrays/objects more than ``limit`` deep (brackets in strings
    do not count). Linear, and never recursive: safe on any input, valid JSON or not."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


@dataclass(frozen=True)
class Unstorable:
    """Where a value cannot be stored (``loc``: keys and indexes from the top) and why."""

    loc: tuple[str | int, ...]
    msg: str
    type: str

    def error(self) -> dict[str, Any]:
        """In the shape of a validation error (`loc`, `msg`, `type`), so forms place it by its field."""
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


NUL_MESSAGE = (
    "text contains a NUL character (\\u0000), which cannot be stored; "
    "remove it, or send binary data as base64"
)
SURROGATE = "text contains a lone UTF-16 surrogate, which is not valid Unicode; send well-formed UTF-8"
NOT_FINITE = "NaN and Infinity cannot be stored as JSON numbers; send a finite number, null or a string"


def _text_problem(text: str) -> tuple[str, str] | None:
    if "\x00" in text:
        return NUL_MESSAGE, "nul_character"
    if _SURROGATE.search(text):
        return SURROGATE, "lone_surrogate"
    return None


def find_unstorable(value: Any, *, max_depth: int, text: bool = True) -> Unstorable | None:
    """The first place in a JSON-like ``value`` that a database could not store, or None
    (``text=False``: only nesting and numbers, not the text of keys and strings)."""
    for loc, item in _walk(value, max_depth, keys=text):
        if isinstance(item, Unstorable):
            return item
        if isinstance(item, float) and not math.isfinite(item):
            return Unstorable(loc, NOT_FINITE, "finite_number")
        if text and isinstance(item, str):
            problem = _text_problem(item)
            if problem is not None:
                return Unstorable(loc, *problem)
    return None


def _walk(value: Any, max_depth: int, *, keys: bool) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every key and leaf of ``value`` with where it is; an Unstorable where it nests too deep."""
    stack: list[tuple[tuple[str | int, ...], Any, int]] = [((), value, 0)]
    while stack:
        loc, item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth + 1 > max_depth:
                yield (
                    loc,
                    Unstorable(
                        loc, f"nested more than {max_depth} levels deep (CONVEYOR_MAX_JSON_DEPTH)", "too_deep"
                    ),
                )
                return
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in reversed(list(pairs)):
                if keys and isinstance(key, str):
                    problem = _text_problem(key)
                    if problem is not None:
                        yield loc, Unstorable((*loc, _printable(key)), f"the key: {problem[0]}", problem[1])
                        return
                stack.append(((*loc, key), child, depth + 1))
        else:
            yield loc, item


def _printable(text: str) -> str:
    """``text`` with what cannot be shown or encoded escaped (a key that names the problem)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")


# --- what a task produces: NUL becomes U+FFFD ----------------------------------------------------

NUL_CHAR = "\x00"
REPLACEMENT = "\ufffd"

# How `json.dumps` writes a NUL (it always escapes control characters, ensure_ascii or not).
_ESCAPED_NUL = "\\u0000"


def storable_text(text: str) -> str:
    """``text`` with every NUL replaced by U+FFFD."""
    return text.replace(NUL_CHAR, REPLACEMENT) if NUL_CHAR in text else text


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
