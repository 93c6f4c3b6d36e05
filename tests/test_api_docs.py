"""The README's `/docs`, `/redoc` and `/openapi.json` answer, from assets the package serves itself.

A FastAPI release once made `/openapi.json` a 500 (a response class with no
default status code) and no test noticed: these request what a new user opens
first. The pages must not need the network (no CDN) and must work under their
Content-Security-Policy (no inline script).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ROOT

STATIC = ROOT / "web" / "static"


@pytest.fixture
def client(app: Any) -> Any:
    with TestClient(app) as client:
        yield client


def test_openapi_json_is_the_whole_api(client: TestClient):
    response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/jobs" in schema["paths"]
    assert "/api/v1/jobs/{job_id}/stream" in schema["paths"]
    stream = schema["paths"]["/api/v1/jobs/{job_id}/stream"]["get"]["responses"]
    assert "text/event-stream" in stream["200"]["content"]


@pytest.mark.parametrize(
    ("path", "assets"),
    [
        ("/docs", ["swagger-ui-bundle.js", "swagger-init.js", "swagger-ui.css"]),
        ("/redoc", ["redoc.standalone.js", "redoc-init.js"]),
    ],
)
def test_docs_pages_load_only_local_assets_without_inline_script(
    client: TestClient, path: str, assets: list[str]
):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "/openapi.json" in html
    assert "cdn" not in html.lower()
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(url.startswith("/static/") for url in urls), urls
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None  # no inline script
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "http" not in policy
    for name in assets:
        assert any(f"/static/apidocs/{name}" in url for url in urls), name
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0


def test_docs_assets_are_the_vendored_releases_with_their_licences():
    """web/static/README.md lists each file's digest: an accidental edit or a half upgrade fails here."""
    readme = (STATIC / "README.md").read_text()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        digest = hashlib.sha256((STATIC / "apidocs" / name).read_bytes()).hexdigest()
        assert digest in readme, name
    for licence in ("swagger-ui.LICENSE", "swagger-ui.NOTICE", "redoc.LICENSE"):
        assert (STATIC / "apidocs" / licence).stat().st_size > 0
