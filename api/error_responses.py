"""Error responses that always serialise: a 4xx must never turn into a 500 while it is rendered.

A request that fails validation is echoed back in its error (`input`, `ctx`),
and what a client sent may be what JSON cannot write: NaN or Infinity (Python's
parser accepts them), or a lone UTF-16 surrogate (valid in a JSON escape, not
in UTF-8). Such values are spelled out as text instead.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from jobs.errors import ConveyorError


def json_safe(value: Any) -> Any:
    """``value`` with non-finite numbers as their names and unencodable text escaped."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {json_safe(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


async def conveyor_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConveyorError)
    body = json_safe({"detail": exc.message, **exc.extra})
    # e.g. Retry-After on a stream refused at its cap
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 (`{"detail": [errors]}`), made safe to write whatever the client sent."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


def document_error_shapes(schema: dict[str, Any]) -> dict[str, Any]:
    """Describe the 422 as it is: FastAPI's list of field errors, or Conveyor's message.

    FastAPI documents every 422 as `{"detail": [field errors]}`; Conveyor's own
    checks (a cursor, a window, a payload) answer `{"detail": "message", ...}`
    with details beside it (`errors` for a payload). Both are documented, so a
    client (and the fuzz test) can rely on the schema. Changes ``schema`` in place.
    """
    shapes = schema.get("components", {}).get("schemas", {})
    error = shapes.get("HTTPValidationError")
    if error is None or "anyOf" in error["properties"]["detail"]:
        return schema
    field_errors = error["properties"]["detail"]
    error["description"] = (
        "A request that does not fit: `detail` is either the list of field errors, or a message "
        "saying what to change (with `errors`, the payload's field errors, when there are any)."
    )
    error["properties"]["detail"] = {
        "title": "Detail",
        "anyOf": [field_errors, {"type": "string"}],
    }
    error["properties"]["errors"] = {
        "title": "Errors",
        "type": "array",
        "items": {"type": "object", "additionalProperties": True},
        "description": "A payload's field errors (`loc` within the payload, `msg`, `type`).",
    }
    error["additionalProperties"] = True
    return schema
