"""What changes when the app runs under AWS Lambda (through Mangum): no streaming, and API
Gateway ends every request after 29 s."""

from __future__ import annotations

import os

from starlette.types import Scope

LAMBDA_MAX_WAIT = 25.0
"""API Gateway ends a request after 29 s: under Lambda no request waits longer than this."""


def under_lambda(scope: Scope) -> bool:
    """Whether this request is served by AWS Lambda (Mangum puts the event in the scope)."""
    return "aws.event" in scope or bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
