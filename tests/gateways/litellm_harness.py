"""The real LiteLLM proxy (litellm[proxy] from PyPI, in its own virtualenv .venv-litellm made by
scripts/test) with the tollgate callback, on loopback; and a sidecar address the tests can switch
between the real enforcer, nothing listening, a hung server and garbage.

The proxy's models answer with `mock_response` (no upstream, no network); the model cost map is the
local copy (LITELLM_LOCAL_MODEL_COST_MAP).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx

from tests.gateways.harness import ROOT, MissingTool, _Threaded
from tests.servers import stop_process
from tollgate.local_services import free_port, port_open

LITELLM_VENV = Path(os.environ.get("TOLLGATE_LITELLM_VENV", ROOT / ".venv-litellm"))
MASTER_KEY = "sk-tollgate-test-master"
# What the mocked model answers: OpenAI's usage block with cached prompt tokens.
MOCK_USAGE = {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59,
              "prompt_tokens_details": {"cached_tokens": 10}}
MOCK_RESPONSE = {"id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "Hello from the mock"}}],
                 "usage": MOCK_USAGE}


def litellm_binary() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        raise MissingTool(f"the LiteLLM proxy is not installed ({exe} is missing): run scripts/test, which "
                          "creates .venv-litellm with the pinned litellm[proxy] (ensure_litellm_venv in "
                          "scripts/_venv.sh)")
    return exe


def proxy_config(tollgate: bool = True) -> dict:
    """The proxy's config; without tollgate's callback (a baseline for loadtest/bench_litellm_callback.py)."""
    mock = {"model": "openai/gpt-4o", "api_key": "sk-mock-upstream"}
    return {
        "model_list": [
            # a JSON mock with a usage block (prompt_tokens_details.cached_tokens included)
            {"model_name": "gpt-4o", "litellm_params": {**mock, "mock_response": MOCK_RESPONSE}},
            # a text mock: LiteLLM makes the usage up (and streams it chunk by chunk)
            {"model_name": "gpt-4o-mini", "litellm_params": {**mock, "mock_response": "Hello from the stream mock"}},
            # Anthropic's messages API (LiteLLM's /v1/messages; its mock takes text only)
            {"model_name": "claude-mock", "litellm_params": {"model": "anthropic/claude-sonnet-4-5",
                                                             "api_key": "sk-mock-upstream",
                                                             "mock_response": "Hello from the Anthropic mock"}},
            # an upstream that fails
            {"model_name": "broken", "litellm_params": {**mock, "mock_response": "litellm.ContextWindowExceededError"}},
        ],
        # a guardrail-like second callback that can refuse what tollgate allowed (litellm_test_hooks.py)
        "litellm_settings": {"callbacks": ["gateway_plugins.litellm.tollgate_litellm.handler"] * tollgate
                                          + ["tests.gateways.litellm_test_hooks.refuser"],
                             "num_retries": 0, "request_timeout": 30},
        "router_settings": {"num_retries": 0},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY", "custom_auth": "tests.gateways.litellm_test_hooks.auth"},
    }


class LiteLLMProxy:
    """`litellm --config ... --port N` with the repository on PYTHONPATH and TOLLGATE_* settings."""

    def __init__(self, env: dict[str, str], tollgate: bool = True):
        self.tollgate = tollgate
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="tollgate-litellm-")
        self.config_path = Path(self._tmp.name) / "config.yaml"
        self.log_path = Path(self._tmp.name) / "proxy.log"
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> "LiteLLMProxy":
        exe = litellm_binary()
        self.config_path.write_text(json.dumps(proxy_config(self.tollgate)))  # YAML is a superset of JSON
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOLLGATE_", "LITELLM_", "DATABASE_URL"))}
        env.update({"PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1",
                    "LITELLM_TELEMETRY": "False", "LITELLM_MASTER_KEY": MASTER_KEY, "DISABLE_SCHEMA_UPDATE": "True", **self.env})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), "--config", str(self.config_path), "--host", "127.0.0.1", "--port", str(self.port),
                 "--num_workers", "1"],
                cwd=self._tmp.name, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the LiteLLM proxy exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the LiteLLM proxy did not start within {timeout} s:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        self._tmp.cleanup()


class _Listener(_Threaded):
    request_queue_size = 128  # concurrent calls connect at once (http.server's default backlog is 5)


class SwitchableSidecar:
    """A fixed loopback address in front of the enforcer. Modes: "forward" (to the enforcer,
    recording the /v1/check requests, with their arrival time in `_at` and the reply's
    Retry-After in `_retry_after`), "garbage" (checks get 200
    with an HTML body), "hung" (checks are never answered), "down" (nothing listens: connection
    refused). In "garbage" and "hung" the usage reports still reach the enforcer, so a test can see
    how a failed-open call is reported."""

    def __init__(self, target: str):
        self.forward = httpx.Client(base_url=target)  # one pool: a client per request costs ~10 ms of CPU
        self.port = free_port()
        self.mode = "forward"
        self.checks: list[dict] = []
        self.extra_headers: dict[str, str] = {}  # added to every forwarded /v1/check reply
        self.usage_failures = 0  # the next this many /v1/usage requests get 503 (the enforcer failing)
        self.seen: list[tuple[str, dict[str, str]]] = []  # (path, lower-case request headers), in order
        self.lock = threading.Lock()
        self.server: _Listener | None = None
        self.release = threading.Event()
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                # one request per connection: "down" must refuse the next request, not serve it
                # on a kept-alive connection
                self.close_connection = True
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                    failing = self.path == "/v1/usage" and outer.usage_failures > 0
                    outer.usage_failures -= failing
                if failing:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                broken = outer.mode if self.path == "/v1/check" else "forward"
                if broken == "hung":
                    outer.release.wait(30)
                    return
                if broken == "garbage":
                    data = b"<html>502 Bad Gateway</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                record = {**json.loads(body), "_at": time.monotonic()} if self.path == "/v1/check" else None
                if record is not None:
                    with outer.lock:
                        outer.checks.append(record)
                r = outer.forward.post(self.path, content=body, headers={"Content-Type": "application/json"})
                if record is not None:
                    record["_retry_after"] = r.headers.get("retry-after")
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                if self.path == "/v1/check":
                    for k, v in outer.extra_headers.items():
                        self.send_header(k, v)
                self.send_header("Connection", "close")
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

        self.server = _Listener(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def switch(self, mode: str) -> None:
        assert mode in ("forward", "garbage", "hung", "down"), mode
        if self.mode == "hung":
            self.release.set()
        self.release = threading.Event()
        self.extra_headers = {}
        self.usage_failures = 0
        if mode == "down":
            self._close()
            assert not port_open("127.0.0.1", self.port)
        elif self.server is None:
            self._listen()
        self.mode = mode

    def headers_of(self, path: str) -> list[dict[str, str]]:
        """The request headers of every request to `path` so far, in order."""
        with self.lock:
            return [h for p, h in self.seen if p == path]

    def checks_of(self, predicate) -> list[dict]:
        with self.lock:
            return [c for c in self.checks if predicate(c)]

    def stop(self) -> None:
        self.release.set()
        self._close()
        self.forward.close()
