"""Real Lambda event shapes for the front doors AWS offers: API Gateway HTTP API (payload v2),
API Gateway REST API (payload v1), Application Load Balancer, and Lambda function URLs (v2)."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qsl

FRONT_DOORS = ("http_api", "rest_api", "alb", "function_url")
TARGET_GROUP = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/conveyor/abc"


def _body(body: bytes | str | None, b64: bool) -> tuple[str | None, bool]:
    if body is None:
        return None, False
    raw = body.encode() if isinstance(body, str) else body
    if b64:
        return base64.b64encode(raw).decode(), True
    return raw.decode(), False


def _v2(
    domain: str,
    method: str,
    path: str,
    headers: dict[str, str],
    query: str,
    cookies: list[str],
    body: bytes | str | None,
    b64: bool,
) -> dict[str, Any]:
    text, encoded = _body(body, b64)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {
            "host": domain,
            "x-forwarded-proto": "https",
            "x-forwarded-port": "443",
            "x-forwarded-for": "203.0.113.7",
            "user-agent": "curl/8.0",
            **headers,
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": domain.split(".")[0],
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
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
        "isBase64Encoded": encoded,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = dict(parse_qsl(query))
    if text is not None:
        event["body"] = text
    return event


def _multi(query: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for name, value in parse_qsl(query):
        values.setdefault(name, []).append(value)
    return values


def _rest_api(
    method: str,
    path: str,
    headers: dict[str, str],
    query: str,
    cookies: list[str],
    body: bytes | str | None,
    b64: bool,
) -> dict[str, Any]:
    text, encoded = _body(body, b64)
    all_headers = {
        "Host": "abc123.execute-api.eu-west-1.amazonaws.com",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": "443",
        "X-Forwarded-For": "203.0.113.7",
        **headers,
    }
    if cookies:
        all_headers["Cookie"] = "; ".join(cookies)
    multi = _multi(query)
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in multi.items()} or None,
        "multiValueQueryStringParameters": multi or None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "curl/8.0"},
            "protocol": "HTTP/1.1",
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


def _alb(
    method: str,
    path: str,
    headers: dict[str, str],
    query: str,
    cookies: list[str],
    body: bytes | str | None,
    b64: bool,
) -> dict[str, Any]:
    text, encoded = _body(body, b64)
    all_headers = {
        "host": "conveyor-alb-123.eu-west-1.elb.amazonaws.com",
        "x-forwarded-proto": "https",
        "x-forwarded-port": "443",
        "x-forwarded-for": "203.0.113.7",
        **headers,
    }
    if cookies:
        all_headers["cookie"] = "; ".join(cookies)
    return {
        "requestContext": {"elb": {"targetGroupArn": TARGET_GROUP}},
        "httpMethod": method,
        "path": path,
        "queryStringParameters": dict(parse_qsl(query)),
        "headers": all_headers,
        "body": text or "",
        "isBase64Encoded": encoded,
    }


def make_event(
    door: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    query: str = "",
    cookies: list[str] | None = None,
    body: bytes | str | None = None,
    b64: bool = False,
) -> dict[str, Any]:
    """An event for ``door`` (one of FRONT_DOORS) carrying one HTTP request."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    cookies = cookies or []
    if door == "http_api":
        return _v2(
            "abc123.execute-api.eu-west-1.amazonaws.com", method, path, headers, query, cookies, body, b64
        )
    if door == "function_url":
        return _v2("abcdefghij.lambda-url.eu-west-1.on.aws", method, path, headers, query, cookies, body, b64)
    if door == "rest_api":
        return _rest_api(method, path, headers, query, cookies, body, b64)
    if door == "alb":
        return _alb(method, path, headers, query, cookies, body, b64)
    raise ValueError(f"unknown front door {door!r}")


def response_body(response: dict[str, Any]) -> bytes:
    body = response.get("body") or ""
    return base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()


def response_headers(response: dict[str, Any]) -> dict[str, str]:
    """Single-value headers, whichever way the front door returned them (lower-cased names)."""
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers.setdefault(name.lower(), values[-1])
    return headers


def set_cookies(response: dict[str, Any]) -> list[str]:
    """Every Set-Cookie the response carries (v2 uses a `cookies` list; v1/ALB use headers)."""
    found = list(response.get("cookies") or [])
    for name, values in (response.get("multiValueHeaders") or {}).items():
        if name.lower() == "set-cookie":
            found += values
    for name, value in (response.get("headers") or {}).items():
        if name.lower() == "set-cookie" and value not in found:
            found.append(value)
    return found
