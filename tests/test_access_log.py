"""uvicorn's access log keeps its line for URLs that carry secrets, with the values redacted.

Every browser EventSource sends its key as `?access_token=`; such a URL (or one
with `password=` or `token=`) used to make the redacting record factory drop
the record's arguments, which uvicorn's access formatter unpacks: each request
wrote a traceback instead of its access line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Backend, ServerProcess


@pytest.fixture
def chatty_server(backend: Backend, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real uvicorn with its access log on, as `conveyor dev` and the Docker image run it."""
    server = ServerProcess(backend, tmp_path / "server.log", log_level="info").start()
    yield server
    server.stop()


def test_access_lines_for_urls_with_secrets_are_logged_redacted(chatty_server: ServerProcess):
    queries = [
        "password=hunter2",
        "token=tok-sesame-1",
        "access_token=cvk_abcdefghijklmnop",
        "a=1&password=hunter3&b=2",
        "password:",  # only the whole line looks like `password: HTTP/1.1`
    ]
    for query in queries:
        assert httpx.get(f"{chatty_server.url}/healthz?{query}").status_code == 200
    chatty_server.stop()
    log = chatty_server.log_path.read_text()
    assert "Traceback" not in log and "Error" not in log, log[-3000:]
    for secret in ("hunter2", "tok-sesame-1", "cvk_abcdefghijklmnop", "hunter3"):
        assert secret not in log
    assert '"GET /healthz?password=[REDACTED] HTTP/1.1" 200' in log
    assert '"GET /healthz?token=[REDACTED] HTTP/1.1" 200' in log
    assert '"GET /healthz?access_token=[REDACTED] HTTP/1.1" 200' in log
    assert '"GET /healthz?a=1&password=[REDACTED]&b=2 HTTP/1.1" 200' in log
    assert '"GET /healthz?password: HTTP/1.1" 200' in log
