"""Hostile and odd input gets a 4xx a person can act on, never a 500 (issue 11).

Each case was a 500 before: the 422 that echoed NaN or a lone surrogate could
not be written; a cursor holding a number, a huge `window` and dates near
years 1 and 9999 overflowed; deep JSON ran out of recursion; and a NUL byte
was stored on SQLite but refused by PostgreSQL. Both databases run each test
(the `backend` fixture).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Tenant
from tests.web_support import csrf_from, sign_in


def strict_json(text: str) -> Any:
    """JSON as a strict client reads it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"the response holds {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def client(app: Any, tenant: Tenant) -> Iterator[TestClient]:
    with TestClient(app, headers=tenant.headers, raise_server_exceptions=False) as client:
        yield client


def post_raw(client: TestClient, body: str, content_type: str | None = "application/json") -> Any:
    headers = {"Content-Type": content_type} if content_type else {}
    return client.post("/api/v1/jobs", content=body.encode("utf-8", "surrogatepass"), headers=headers)


def heavy_compute(payload: str) -> str:
    """A submission of heavy_compute (any JSON object) with ``payload`` as written."""
    return '{"task": "heavy_compute", "payload": ' + payload + "}"


def job_count(client: TestClient) -> int:
    return len(client.get("/api/v1/jobs").json()["items"])


# --- a 422 that echoes what JSON cannot write -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "echo"),
    [
        ('{"task": "long_task", "timeout": NaN}', "timeout", "NaN"),
        ('{"task": "long_task", "timeout": Infinity}', "timeout", "Infinity"),
        ('{"task": "long_task", "delay": -Infinity}', "delay", "-Infinity"),
        ('{"task": "%s\\ud800"}' % ("x" * 120), "task", "\\ud800"),
        ('{"task": "long_task", "tags": ["\\ud800"]}', "tags", "\\ud800"),
    ],
)
def test_a_request_that_fails_validation_with_unwritable_values_is_a_readable_422(
    client: TestClient, body: str, field: str, echo: str
):
    response = post_raw(client, body)
    assert response.status_code == 422, response.text
    errors = strict_json(response.text)["detail"]
    assert field in errors[0]["loc"]
    assert errors[0]["msg"]
    assert errors[0]["input"] == echo or echo in json.dumps(errors[0]["input"])


# --- what a database cannot store: 422 naming the field, on SQLite and PostgreSQL alike ----------


@pytest.mark.parametrize(
    ("payload", "where", "why"),
    [
        ('{"a": "x\\u0000y"}', "payload.a", "NUL"),
        ('{"a": {"b": ["fine", "bin\\u0000ary"]}}', "payload.a.b.1", "NUL"),
        ('{"a": "\\ud800"}', "payload.a", "surrogate"),
        ('{"k\\u0000": 1}', "payload.k\\u0000", "NUL"),
        ('{"a": NaN}', "payload.a", "NaN"),
        ('{"a": [1, -Infinity]}', "payload.a.1", "NaN and Infinity"),
    ],
)
def test_a_payload_no_database_can_store_is_a_422_naming_the_field(
    client: TestClient, payload: str, where: str, why: str
):
    before = job_count(client)
    response = post_raw(client, heavy_compute(payload))
    assert response.status_code == 422, response.text
    body = strict_json(response.text)
    assert body["detail"].startswith(f"`{where}`: ") and why in body["detail"]
    assert ".".join(map(str, ["payload", *body["errors"][0]["loc"]])) == where
    assert job_count(client) == before  # nothing was stored


def test_a_nul_byte_in_a_field_the_task_declares_is_refused_too(client: TestClient):
    response = client.post(
        "/api/v1/jobs", json={"task": "always_fails", "payload": {"message": "before\x00after"}}
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["message"], "msg": response.json()["errors"][0]["msg"], "type": "nul_character"}
    ]
    assert "`payload.message`" in response.json()["detail"]


# --- list cursors, queue stats windows, analytics dates ------------------------------------------


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [_cursor(5), _cursor([1, "x"]), _cursor(["2026-01-01T00:00:00Z", 5]), _cursor([1.5, 2]), "12345"],
)
def test_a_cursor_that_holds_a_number_is_a_422(client: TestClient, cursor: str):
    response = client.get("/api/v1/jobs", params={"cursor": cursor})
    assert response.status_code == 422, response.text
    assert "next_cursor of a previous page" in response.json()["detail"]


@pytest.mark.parametrize("window", ["999999999999999d", "9" * 16, "100000000w", "1e400", "367d", "30s"])
def test_a_window_out_of_bounds_is_a_422_naming_the_bounds(client: TestClient, window: str):
    response = client.get("/api/v1/queue/stats", params={"window": window})
    assert response.status_code == 422, response.text
    assert "between 1m and 366d" in response.json()["detail"]


@pytest.mark.parametrize(
    "params",
    [
        {"from": "0001-01-01", "to": "0001-01-02"},
        {"to": "0001-01-03"},
        {"from": "0001-01-01T00:00:00+01:00", "to": "0001-01-02"},
        {"from": "9999-12-30", "to": "9999-12-31"},
        {"to": "9999-12-31T23:59:59-05:00"},
        {"from": "9999-12-01"},
    ],
)
def test_analytics_dates_near_year_1_or_9999_are_a_422(client: TestClient, params: dict[str, str]):
    response = client.get("/api/v1/analytics/summary", params=params)
    assert response.status_code == 422, response.text
    assert "must be between 1970-01-01 and 9000-01-01" in response.json()["detail"]


# --- nesting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [250, 1000, 100_000])
@pytest.mark.parametrize("content_type", ["application/json", None])
def test_json_nested_past_the_limit_is_a_422_naming_the_setting(
    client: TestClient, depth: int, content_type: str | None
):
    nested = "[" * depth + "]" * depth
    response = post_raw(client, heavy_compute('{"a": ' + nested + "}"), content_type)
    assert response.status_code == 422, response.text
    assert "more than 64 levels deep" in response.json()["detail"]
    assert "CONVEYOR_MAX_JSON_DEPTH" in response.json()["detail"]


def test_nesting_up_to_the_limit_is_accepted_and_brackets_in_strings_do_not_count(client: TestClient):
    nested = "[" * 62 + "]" * 62  # body {…} + payload {…} + 62 arrays = 64 levels
    text = "[" * 500
    response = post_raw(client, heavy_compute('{"a": ' + nested + ', "t": "' + text + '"}'))
    assert response.status_code == 201, response.text


def test_the_web_form_refuses_deep_json_and_unstorable_text_by_the_field(app: Any, tenant: Tenant):
    with TestClient(app, raise_server_exceptions=False) as web:
        sign_in(web, tenant.key)

        def submit(payload_text: str) -> Any:
            form = web.get("/jobs/new/heavy_compute")
            key = re.search(r'name="idempotency_key" value="([^"]+)"', form.text)
            data = {"csrf_token": csrf_from(form.text), "__payload__": payload_text}
            if key:
                data["idempotency_key"] = key.group(1)
            return web.post("/jobs/new/heavy_compute", data=data, follow_redirects=False)

        deep = submit('{"a": %s}' % ("[" * 1000 + "]" * 1000))
        assert deep.status_code == 422
        assert "Nest at most 64 levels" in deep.text
        nul = submit('{"a": "x\\u0000y"}')
        assert nul.status_code == 422
        assert "NUL character" in nul.text

        form = web.get("/jobs/new/always_fails")  # a forged idempotency key holding NUL: ignored
        data = {"csrf_token": csrf_from(form.text), "idempotency_key": "k\x00", "message": "hi"}
        assert web.post("/jobs/new/always_fails", data=data, follow_redirects=False).status_code == 303


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/v1/jobs?tag=a%00", "tag"),
        ("/api/v1/jobs?limit=5&task=x%00y", "task"),
        ("/api/v1/jobs?queue=%00", "queue"),
        ("/api/v1/analytics/summary?task=%00", "task"),
        ("/api/v1/queue/stats?window=1h%00", "window"),
    ],
)
def test_a_nul_in_a_query_parameter_is_a_422_naming_it(client: TestClient, path: str, name: str):
    """PostgreSQL text cannot hold NUL: such a filter used to fail in the database, a 500."""
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert f"`{name}` contains a NUL character" in response.json()["detail"]
