"""Helpers for the page tests: sign a TestClient in through the real form, read tokens out of pages."""

from __future__ import annotations

import re
from typing import Any

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    match = CSRF_FIELD.search(html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def sign_in(client: Any, key: str, next_path: str = "/jobs") -> Any:
    """GET the form (its sign-in cookie), POST the key with the form's token; returns the 303."""
    form = client.get("/sign-in")
    assert form.status_code == 200, form.text
    response = client.post(
        "/sign-in",
        data={"api_key": key, "csrf_token": csrf_from(form.text), "next": next_path},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return response
