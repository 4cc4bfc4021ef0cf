"""Real processes and servers for the gateway tests, all on loopback.

- `Nginx`: Debian's nginx (with lua-nginx-module when asked) under a temporary prefix, as the
  current user, on a free port; its error log is printed when a test fails.
- `Caddy`: Debian's caddy running a Caddyfile as the current user, admin endpoint off, its
  storage in a temporary directory.
- `Upstream`: a tiny threaded HTTP server answering like an LLM API (OpenAI or Anthropic JSON with a
  usage block, or an Anthropic event stream), recording the requests it got.
- `GarbageServer` answers 200 with nonsense (`tests.servers.HungServer` accepts and never answers).
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from tests.servers import stop_process
from tollgate.local_services import free_port, port_open

ROOT = Path(__file__).resolve().parents[2]
KONG_PLUGIN_DIR = ROOT / "gateway_plugins" / "kong"
KONG_SHIM_DIR = ROOT / "tests" / "gateways" / "kong_shim"
MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/usr/lib64/nginx/modules")


class MissingTool(RuntimeError):
    pass


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if not found:
        raise MissingTool("nginx is not installed: run scripts/test (it installs the Debian packages) or "
                          "apt-get install nginx libnginx-mod-http-lua lua-cjson")
    return found


def lua_module_lines() -> str:
    """load_module lines for ndk and lua-nginx-module (libnginx-mod-http-ndk / -lua)."""
    for d in MODULE_DIRS:
        ndk, lua = Path(d) / "ndk_http_module.so", Path(d) / "ngx_http_lua_module.so"
        if ndk.exists() and lua.exists():
            return f"load_module {ndk};\nload_module {lua};\n"
    raise MissingTool("lua-nginx-module not found: apt-get install libnginx-mod-http-lua")


def busted_binary() -> str:
    found = shutil.which("busted")
    if not found:
        raise MissingTool("busted is not installed: apt-get install lua-busted")
    if not shutil.which("luajit"):
        raise MissingTool("luajit is not installed: apt-get install luajit2 (or luajit)")
    return found


class Nginx:
    """nginx -p <prefix> -c nginx.conf -g 'daemon off;' with the given http{} body."""

    def __init__(self, prefix: Path, http_body: str, *, lua: bool = False, main: str = ""):
        self.prefix = Path(prefix)
        self.port = free_port()
        self.lua = lua
        (self.prefix / "logs").mkdir(parents=True, exist_ok=True)
        (self.prefix / "tmp").mkdir(exist_ok=True)
        self.error_log = self.prefix / "logs" / "error.log"
        user = ""
        if os.geteuid() == 0:  # the master is root: keep the worker as root too, it reads our temp files
            user = f"user {pwd.getpwuid(0).pw_name};\n"
        tmp = self.prefix / "tmp"
        self.conf = (
            (lua_module_lines() if lua else "")
            + user
            + "worker_processes 1;\n"
            + f"error_log {self.error_log} info;\n"
            + f"pid {self.prefix / 'logs' / 'nginx.pid'};\n"
            + main
            + "events { worker_connections 256; }\n"
            + "http {\n"
            + "  access_log off;\n"
            + "".join(f"  {k}_temp_path {tmp / k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + http_body.replace("$PORT", str(self.port))
            + "\n}\n"
        )
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Nginx":
        conf_path = self.prefix / "nginx.conf"
        conf_path.write_text(self.conf)
        test = subprocess.run([nginx_binary(), "-t", "-p", str(self.prefix), "-c", str(conf_path)],
                              capture_output=True, text=True)
        if test.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{test.stderr}\n--- nginx.conf ---\n{self.conf}")
        self.proc = subprocess.Popen(
            [nginx_binary(), "-p", str(self.prefix), "-c", str(conf_path), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError(f"nginx did not start: {err}\n{self.log()}")
            time.sleep(0.02)
        return self

    def log(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # fast shutdown
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


def caddy_binary() -> str:
    found = shutil.which("caddy")
    if not found:
        raise MissingTool("caddy is not installed: run scripts/test (it installs the Debian packages) or "
                          "apt-get install caddy")
    return found


class Caddy:
    """`caddy run` of a Caddyfile, as the current user, with its data, config and logs in `home`
    (no admin endpoint, no autosave into the real user's directories)."""

    def __init__(self, home: Path, caddyfile: str, port: int):
        self.home = Path(home)
        self.port = port
        self.caddyfile = self.home / "Caddyfile"
        self.caddyfile.write_text(caddyfile)
        self.log_path = self.home / "caddy.log"
        self.env = {**os.environ, "HOME": str(self.home), "XDG_DATA_HOME": str(self.home / "data"),
                    "XDG_CONFIG_HOME": str(self.home / "config")}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Caddy":
        args = ["--config", str(self.caddyfile), "--adapter", "caddyfile"]
        check = subprocess.run([caddy_binary(), "validate", *args], capture_output=True, text=True, env=self.env)
        if check.returncode != 0:
            raise RuntimeError(f"caddy validate failed:\n{check.stderr[-3000:]}\n--- Caddyfile ---\n{self.caddyfile.read_text()}")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([caddy_binary(), "run", *args], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.home)
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"caddy did not start:\n{self.log()[-3000:]}")
            time.sleep(0.02)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
KONG_PHASES = ("access", "header_filter", "body_filter", "log")


def kong_location(name: str, upstream_url: str | None, key_auth_header: str | None = None, content: str = "",
                  consumer_auth: bool = False) -> str:
    """location /<name>/ running the plugin instance <name> in each phase, proxied to upstream_url
    (or answering `content`, nginx directives, itself); with key_auth_header, the shim's stand-in
    for key-auth runs first (rewrite phase), with consumer_auth its stand-in for any other
    authentication plugin (the consumer named in x-test-consumer / x-test-custom-id)."""
    phases = "".join(f'    {p}_by_lua_block {{ require("kong_shim").run("{p}", "{name}") }}\n' for p in KONG_PHASES)
    if key_auth_header:
        phases = f'    rewrite_by_lua_block {{ require("kong_shim").key_auth("{key_auth_header}") }}\n' + phases
    elif consumer_auth:
        phases = '    rewrite_by_lua_block { require("kong_shim").consumer_auth() }\n' + phases
    if upstream_url:
        content = (f"    proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n"
                   f"    proxy_pass {upstream_url}/;\n")
    return f"  location /{name}/ {{\n{phases}{content}  }}\n"


def kong_http_body(prefix: Path, configs: dict, server: str, extra: str = "") -> str:
    """The http{} body of nginx running the Kong plugin through the PDK shim: `configs` (instance
    name -> plugin configuration) written to prefix/configs.json, `server` the locations."""
    (prefix / "configs.json").write_text(json.dumps(configs))
    return (
        f'  lua_package_path "{KONG_PLUGIN_DIR}/?.lua;{KONG_SHIM_DIR}/?.lua;;";\n'
        f'  init_by_lua_block {{ require("kong_shim").init("tollgate", "{prefix / "configs.json"}") }}\n'
        "  client_body_buffer_size 1m;\n"
        "  client_max_body_size 8m;\n"
        + extra
        + "  server {\n    listen 127.0.0.1:$PORT backlog=4096;\n" + server + "  }\n"
    )


# ------------------------------------------------------------------------------ upstream servers


OPENAI_USAGE = {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59,
                "prompt_tokens_details": {"cached_tokens": 10}}
ANTHROPIC_USAGE = {"input_tokens": 31, "output_tokens": 12, "cache_read_input_tokens": 4}


class _Threaded(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class RecordingSidecar:
    """Forwards every POST to `target` (the real enforcer) as it came, Content-Type included, and
    its answer back; holds each /v1/usage for `usage_delay` s first. Records `seen`: (path, request
    headers) of every call, and `usage`: (content type, the correlation ids it carries, the
    enforcer's status) of each /v1/usage."""

    BATCH = "application/cloudevents-batch+json"

    def __init__(self, target: str, usage_delay: float = 0.0):
        outer = self
        self.seen: list[tuple[str, dict]] = []
        self.usage: list[tuple[str, list[str], int]] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ctype = self.headers.get("Content-Type", "application/json")
                outer.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                is_usage = self.path.endswith("/v1/usage")
                if is_usage:
                    time.sleep(usage_delay)
                r = httpx.post(target + self.path, content=body, headers={"Content-Type": ctype})
                if is_usage:
                    doc = json.loads(body)
                    events = [ce["data"] for ce in doc] if ctype == outer.BATCH else [doc]
                    outer.usage.append((ctype, [e["correlation_id"] for e in events], r.status_code))
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

        self.server = _Threaded(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class _LoopbackHTTP:
    """A threaded HTTP server on a free loopback port, serving a subclass's handler."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = _Threaded(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Upstream(_LoopbackHTTP):
    """An LLM-like API: POST /v1/chat/completions (OpenAI), /v1/messages (Anthropic; stream=true
    gives an event stream), anything else: 200 {"ok": true} without usage."""

    def __init__(self):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _record(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with outer.lock:
                    outer.requests.append({"method": self.command, "path": self.path,
                                           "headers": {k.lower(): v for k, v in self.headers.items()},
                                           "body": body})
                return body

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._record()
                self._send(200, b'{"ok": true}')

            def do_POST(self):
                raw = self._record()
                try:
                    req = json.loads(raw or b"{}")
                except ValueError:
                    req = {}
                path = self.path.split("?")[0]
                if path.endswith("/v1/chat/completions"):
                    doc = {"id": "chatcmpl-1", "object": "chat.completion", "model": req.get("model"),
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                        "finish_reason": "stop"}],
                           "usage": OPENAI_USAGE}
                    self._send(200, json.dumps(doc).encode())
                elif path.endswith("/v1/messages") and req.get("stream"):
                    events = [
                        ("message_start", {"type": "message_start", "message": {
                            "id": "msg_1", "usage": {"input_tokens": ANTHROPIC_USAGE["input_tokens"], "output_tokens": 1}}}),
                        ("content_block_delta", {"type": "content_block_delta", "delta": {"text": "x" * 2000}}),
                        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": ANTHROPIC_USAGE["output_tokens"]}}),
                        ("message_stop", {"type": "message_stop"}),
                    ]
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for name, data in events:
                        chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                elif path.endswith("/v1/messages"):
                    doc = {"id": "msg_1", "type": "message", "role": "assistant", "model": req.get("model"),
                           "content": [{"type": "text", "text": "hi"}], "usage": ANTHROPIC_USAGE}
                    self._send(200, json.dumps(doc).encode())
                elif path.endswith("/fail"):
                    self._send(503, b'{"error": "overloaded"}')
                else:
                    self._send(200, b'{"ok": true}')

        self.serve(Handler)

    def received(self, path_suffix: str = "") -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"].endswith(path_suffix)]


class GarbageServer(_LoopbackHTTP):
    """A sidecar answering 200 with a body that is not the contract's JSON."""

    def __init__(self, body: bytes = b"<html>502 Bad Gateway</html>", status: int = 200):
        payload = body

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST  # forward-auth proxies check with GET

        self.serve(Handler)


def dead_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"
