"""Run the real enforcer as a subprocess (for tests and benchmarks).

    with run_enforcer({"TOLLGATE_REDIS_URL": redis_server.url}) as enf:
        httpx.post(f"{enf.url}/v1/check", json=...)

The server gets its own spool file in a temporary directory unless TOLLGATE_SPOOL_PATH is given;
its stdout/stderr go to `enf.log_path` (`enf.logs()` reads them, e.g. in an assertion message).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tollgate.local_services import free_port


def stop_process(proc: subprocess.Popen | None, timeout: float) -> int | None:
    """SIGTERM and wait for a graceful exit, SIGKILL if it hangs; returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode

ROOT = Path(__file__).resolve().parent.parent


class EnforcerProcess:
    def __init__(self, env: dict[str, str] | None = None, workers: int = 1, port: int | None = None,
                 host: str = "127.0.0.1"):
        self.env = dict(env or {})
        self.workers = workers
        self.host = host
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="tollgate-enforcer-")
        self.env.setdefault("TOLLGATE_SPOOL_PATH", os.path.join(self._tmp.name, "spool.jsonl"))
        self.log_path = Path(self._tmp.name) / "enforcer.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def spool_path(self) -> str:
        return self.env["TOLLGATE_SPOOL_PATH"]

    def start(self, timeout: float = 20.0) -> "EnforcerProcess":
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "enforcer.server", "--host", self.host, "--port", str(self.port),
                 "--workers", str(self.workers), "--log-level", "warning"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the enforcer exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the enforcer did not answer /healthz within {timeout} s:\n{self.logs()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (uvicorn shuts down gracefully: queued events are flushed), SIGKILL if it hangs."""
        stop_process(self.proc, timeout)
        self.proc = None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        self._tmp.cleanup()


@contextlib.contextmanager
def run_enforcer(env: dict[str, str] | None = None, workers: int = 1, port: int | None = None):
    """Start an enforcer, yield it (EnforcerProcess: .url, .port, .logs(), .stop(), .start()), stop it."""
    server = EnforcerProcess(env, workers=workers, port=port)
    try:
        yield server.start()
    finally:
        server.cleanup()


class HungServer:
    """Accepts TCP connections but never answers: a sidecar or a Redis stuck past any timeout.
    `scheme` only shapes `url` ("http": a sidecar, "redis": a Redis)."""

    def __init__(self, scheme: str = "http"):
        self.scheme = scheme
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.accepted = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.scheme == "redis" else f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            self.conns.append(conn)  # held open, never answered

    def start(self) -> "HungServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self.thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


class ControlProcess:
    """The real `tollgate-control` (python -m control.service): the admin API and the control
    plane's background work (the projection's self-healing), on a free port."""

    def __init__(self, env: dict[str, str], port: int | None = None):
        self.env = env
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="tollgate-control-")
        self.log_path = Path(self._tmp.name) / "control.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "ControlProcess":
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "control.service", "--port", str(self.port)],
                                         cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tollgate-control did not start:\n{self.logs()[-3000:]}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        return stop_process(self.proc, timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
