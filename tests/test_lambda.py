"""The Mangum handler answers API Gateway HTTP API (v2) events with the same API."""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace
from typing import Any

from tests.conftest import Backend, Tenant


def http_api_event(
    method: str, path: str, key: str, body: str | None = None, query: str = ""
) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {
            "authorization": f"Bearer {key}",
            "content-type": "application/json",
            "host": "abc123.execute-api.eu-west-1.amazonaws.com",
            "x-forwarded-proto": "https",
            "x-forwarded-port": "443",
            "x-forwarded-for": "203.0.113.7",
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "curl/8.0",
            },
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": "$default",
            "stage": "$default",
            "time": "23/Nov/2026:10:00:00 +0000",
            "timeEpoch": 1795428000000,
        },
        "body": body,
        "isBase64Encoded": False,
    }


def test_submit_and_read_status_through_the_lambda_handler(env: Backend, tenant: Tenant):
    module = importlib.import_module("api.lambda_handler")
    context = SimpleNamespace(function_name="conveyor-api", aws_request_id="req-1")

    created = module.handler(
        http_api_event(
            "POST", "/api/v1/jobs", tenant.key, json.dumps({"task": "long_task", "payload": {"n": 3}})
        ),
        context,
    )
    assert created["statusCode"] == 201, created
    job_id = json.loads(created["body"])["job_id"]

    status = module.handler(http_api_event("GET", f"/api/v1/jobs/{job_id}", tenant.key), context)
    assert status["statusCode"] == 200
    body = json.loads(status["body"])
    assert body["job_id"] == job_id and body["status"] in {"queued", "started", "finished"}
    assert status["headers"]["content-type"] == "application/json"

    missing = module.handler(http_api_event("GET", "/api/v1/jobs/nope", tenant.key), context)
    assert missing["statusCode"] == 404
