"""The Mangum handler serves the same app behind every AWS front door, against real Redis and SQL."""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import ROOT, Backend, Tenant, seed_job
from tests.lambda_events import FRONT_DOORS, make_event, response_body, response_headers, set_cookies
from tests.web_support import csrf_from

CONTEXT = SimpleNamespace(function_name="conveyor-api", aws_request_id="req-1", memory_limit_in_mb=1024)


@pytest.fixture
def handler(env: Backend) -> Any:
    return importlib.import_module("api.lambda_handler").handler


def call(
    handler: Any, door: str, method: str, path: str, tenant: Tenant | None = None, **kw: Any
) -> dict[str, Any]:
    headers = dict(kw.pop("headers", {}))
    if tenant is not None:
        headers["authorization"] = f"Bearer {tenant.key}"
    return handler(make_event(door, method, path, headers=headers, **kw), CONTEXT)


@pytest.mark.parametrize("door", FRONT_DOORS)
def test_submit_then_read_the_status(handler: Any, tenant: Tenant, door: str):
    body = json.dumps({"task": "long_task", "payload": {"n": 3}})
    created = call(
        handler, door, "POST", "/api/v1/jobs", tenant, body=body, headers={"content-type": "application/json"}
    )
    assert created["statusCode"] == 201, created
    job_id = json.loads(response_body(created))["job_id"]

    status = call(handler, door, "GET", f"/api/v1/jobs/{job_id}", tenant)
    assert status["statusCode"] == 200
    snap = json.loads(response_body(status))
    assert snap["job_id"] == job_id and snap["status"] in {"queued", "started", "finished"}
    headers = response_headers(status)
    assert headers["content-type"] == "application/json"
    assert headers["etag"] == f'"{snap["seq"]}"'


@pytest.mark.parametrize("door", FRONT_DOORS)
def test_a_base64_encoded_body_is_decoded(handler: Any, tenant: Tenant, door: str):
    body = json.dumps({"task": "heavy_compute", "payload": {"text": "naïve ✓"}}).encode()
    created = call(
        handler,
        door,
        "POST",
        "/api/v1/jobs",
        tenant,
        body=body,
        b64=True,
        headers={"content-type": "application/json"},
    )
    assert created["statusCode"] == 201, response_body(created)


@pytest.mark.parametrize("door", FRONT_DOORS)
def test_query_strings_reach_the_app(handler: Any, tenant: Tenant, door: str):
    for _ in range(3):
        call(
            handler,
            door,
            "POST",
            "/api/v1/jobs",
            tenant,
            body=json.dumps({"task": "long_task", "queue": "other"}),
            headers={"content-type": "application/json"},
        )
    page = call(handler, door, "GET", "/api/v1/jobs", tenant, query="status=queued&limit=2&queue=other")
    assert page["statusCode"] == 200
    data = json.loads(response_body(page))
    assert len(data["items"]) == 2 and data["next_cursor"]
    rest = call(
        handler,
        door,
        "GET",
        "/api/v1/jobs",
        tenant,
        query=f"status=queued&limit=2&queue=other&cursor={data['next_cursor']}",
    )
    assert len(json.loads(response_body(rest))["items"]) == 1


@pytest.mark.parametrize("door", FRONT_DOORS)
def test_client_errors_keep_their_status_and_message(handler: Any, tenant: Tenant, door: str):
    missing = call(handler, door, "GET", "/api/v1/jobs/3f0e2a8e-0000-4000-8000-000000000000", tenant)
    assert missing["statusCode"] == 404
    assert "No job" in json.loads(response_body(missing))["detail"]
    unauthorized = call(handler, door, "GET", "/api/v1/jobs")
    assert unauthorized["statusCode"] == 401
    assert response_headers(unauthorized)["www-authenticate"] == "Bearer"
    invalid = call(
        handler,
        door,
        "POST",
        "/api/v1/jobs",
        tenant,
        body='{"task": "long_task", "payload": {"n": "x"}}',
        headers={"content-type": "application/json"},
    )
    assert invalid["statusCode"] == 422


def test_the_handler_serves_health_without_any_dependency(handler: Any):
    response = call(handler, "http_api", "GET", "/healthz")
    assert response["statusCode"] == 200
    assert json.loads(response_body(response)) == {"status": "ok"}


# --- the pages behind every front door ---------------------------------------------------------------


def cookie_pair(set_cookie_values: list[str], name: str) -> str:
    """`name=value` of the cookie ``name`` set by a response (what a browser sends back)."""
    for value in set_cookie_values:
        pair = value.split(";", 1)[0]
        if pair.startswith(f"{name}="):
            return pair
    raise AssertionError(f"no Set-Cookie for {name} in {set_cookie_values}")


def sign_in_through(handler: Any, door: str, tenant: Tenant, *, b64: bool) -> str:
    """Sign in the way a browser does behind ``door``; returns the session cookie pair."""
    form = call(handler, door, "GET", "/sign-in")
    assert form["statusCode"] == 200, form
    assert response_headers(form)["content-type"].startswith("text/html")
    sign_in_cookie = cookie_pair(set_cookies(form), "conveyor_signin")
    body = urlencode(
        {"api_key": tenant.key, "csrf_token": csrf_from(response_body(form).decode()), "next": "/jobs"}
    )
    signed_in = call(
        handler,
        door,
        "POST",
        "/sign-in",
        body=body.encode(),
        b64=b64,
        cookies=[sign_in_cookie],
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert signed_in["statusCode"] == 303, response_body(signed_in)
    assert response_headers(signed_in)["location"] == "/jobs"
    cookies = set_cookies(signed_in)
    session = next(c for c in cookies if c.startswith("conveyor_session="))
    assert "httponly" in session.lower() and "samesite=lax" in session.lower()
    assert "; secure" in session.lower()  # the front doors are https (X-Forwarded-Proto)
    assert any(c.startswith("conveyor_signin=") for c in cookies)  # and the sign-in cookie is cleared
    return cookie_pair(cookies, "conveyor_session")


@pytest.mark.parametrize("b64", [False, True], ids=["plain", "base64"])
@pytest.mark.parametrize("door", FRONT_DOORS)
def test_sign_in_with_a_form_and_the_cookie_round_trip(handler: Any, tenant: Tenant, door: str, b64: bool):
    session = sign_in_through(handler, door, tenant, b64=b64)
    page = call(handler, door, "GET", "/jobs", cookies=[session])
    assert page["statusCode"] == 200, response_body(page)
    html = response_body(page).decode()
    assert tenant.name in html and "content-security-policy" in response_headers(page)
    signed_out = call(handler, door, "GET", "/jobs")
    assert signed_out["statusCode"] == 303
    assert response_headers(signed_out)["location"].startswith("/sign-in")


@pytest.mark.parametrize("door", FRONT_DOORS)
def test_pages_poll_under_lambda(handler: Any, tenant: Tenant, door: str):
    session = sign_in_through(handler, door, tenant, b64=False)
    job_id = seed_job(tenant=tenant.name)
    page = call(handler, door, "GET", f"/jobs/{job_id}", cookies=[session])
    assert page["statusCode"] == 200
    html = response_body(page).decode()
    assert f'hx-get="/jobs/{job_id}/live" hx-trigger="every 1s"' in html
    assert "sse-connect" not in html and "hx-ext" not in html
    fragment = call(
        handler, door, "GET", f"/jobs/{job_id}/live", cookies=[session], headers={"hx-request": "true"}
    )
    assert fragment["statusCode"] == 200
    etag = response_headers(fragment)["etag"]
    again = call(
        handler, door, "GET", f"/jobs/{job_id}/live", cookies=[session], headers={"if-none-match": etag}
    )
    assert again["statusCode"] == 304


@pytest.mark.parametrize("door", FRONT_DOORS)
def test_static_files_round_trip(handler: Any, door: str):
    script = call(handler, door, "GET", "/static/htmx.min.js")
    assert script["statusCode"] == 200
    assert "javascript" in response_headers(script)["content-type"]
    assert response_body(script) == (ROOT / "web" / "static" / "htmx.min.js").read_bytes()
    icon = call(handler, door, "GET", "/static/favicon.svg")
    assert icon["statusCode"] == 200
    assert response_headers(icon)["content-type"].startswith("image/svg+xml")
    assert icon["isBase64Encoded"] is True  # not a text type to Mangum: sent base64, decoded intact
    assert response_body(icon) == (ROOT / "web" / "static" / "favicon.svg").read_bytes()
