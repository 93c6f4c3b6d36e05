"""`X-Content-Type-Options: nosniff` and `Cache-Control: no-store` on every JSON response.

JSON answers hold job data (params, results, errors, owners): no shared or browser cache may
keep them, and no browser may sniff them into something executable. A pure ASGI middleware so
that streams and the snapshot fast path pass through untouched apart from these headers;
static assets (not JSON) keep their own long-lived caching, and ETags stay as they are (a
client that keeps its own copy still gets its 304).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

JSON_TYPES = (b"application/json", b"application/problem+json")


class JsonResponseHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if content_type.split(b";")[0].strip().lower() in JSON_TYPES:
                    headers = [
                        (k, v)
                        for k, v in headers
                        if k.lower() not in (b"cache-control", b"x-content-type-options")
                    ]
                    headers += [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
