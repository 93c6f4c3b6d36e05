"""`/docs` (Swagger UI) and `/redoc` (ReDoc), from assets vendored in web/static/apidocs.

FastAPI's own pages load their scripts from a CDN and start Swagger UI with an
inline script: offline, or under a Content-Security-Policy without
`'unsafe-inline'`, they show a blank page. These pages load everything from
`/static/apidocs` (versions and licences in web/static/README.md) and carry a
policy of their own: the pages' policy, plus inline styles on `/redoc` (ReDoc
styles its components by injecting `<style>` elements) and a `blob:` worker for
ReDoc's search.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

SWAGGER_UI_VERSION = "5.35.0"
REDOC_VERSION = "2.5.4"

_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'{styles}; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self'{workers}; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SWAGGER_POLICY = _POLICY.format(styles="", workers="")
REDOC_POLICY = _POLICY.format(styles=" 'unsafe-inline'", workers=" blob:")

_SWAGGER_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · API docs</title>
<link rel="icon" href="{base}/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{base}/static/apidocs/swagger-ui.css?v={version}">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="{base}/static/apidocs/swagger-ui-bundle.js?v={version}"></script>
<script src="{base}/static/apidocs/swagger-init.js?v={version}"></script>
</body>
</html>
"""

_REDOC_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · API reference</title>
<link rel="icon" href="{base}/static/favicon.svg" type="image/svg+xml">
</head>
<body>
<div id="redoc" data-openapi-url="{openapi_url}"></div>
<script src="{base}/static/apidocs/redoc.standalone.js?v={version}"></script>
<script src="{base}/static/apidocs/redoc-init.js?v={version}"></script>
</body>
</html>
"""


def _docs_page(request: Request, template: str, version: str, policy: str) -> HTMLResponse:
    base = request.scope.get("root_path", "")
    app = request.app
    body = template.format(
        title=escape(app.title),
        base=escape(base),
        version=version,
        openapi_url=escape(base + (app.openapi_url or "/openapi.json")),
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
    }
    return HTMLResponse(body, headers=headers)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Interactive API docs: try a request with an API key (Authorize, then `Bearer` key)."""
    return _docs_page(request, _SWAGGER_PAGE, SWAGGER_UI_VERSION, SWAGGER_POLICY)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """The API reference, one page."""
    return _docs_page(request, _REDOC_PAGE, REDOC_VERSION, REDOC_POLICY)
