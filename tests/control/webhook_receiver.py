"""A real webhook receiver on loopback for the alert tests: a Starlette app under uvicorn in a
thread of its own, on a free port. It checks every delivery's signature with the recipe the docs
give receivers (`verify`, as in docs/ARCHITECTURE.md), and can fail (500) for a while."""
from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollgate.local_services import free_port


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """The documented verification recipe (docs/ARCHITECTURE.md, README), verbatim."""
    parts = dict(p.split("=", 1) for p in header.split(","))
    t = int(parts["t"])
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - t) <= tolerance_s and hmac.compare_digest(expected, parts["v1"])


@dataclass
class Received:
    at: float  # time.time() when it arrived
    headers: dict[str, str]
    body: dict
    signed: bool  # the signature verified with the endpoint's secret
    status: int  # what we answered


@dataclass
class Receiver:
    secret: str = ""
    fail_first: int = 0  # answer 500 to this many requests, then 200
    fail_until: float = 0.0  # or answer 500 until this time.time()
    received: list[Received] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ok(self) -> list[Received]:
        return [r for r in self.received if r.status == 200]

    async def _hook(self, request: Request) -> Response:
        raw = await request.body()
        status = 500 if (len(self.received) < self.fail_first or time.time() < self.fail_until) else 200
        sig = request.headers.get("tollgate-signature", "")
        self.received.append(Received(time.time(), dict(request.headers), orjson.loads(raw),
                                      bool(self.secret and sig and verify(self.secret, sig, raw)), status))
        return Response(b"no" if status != 200 else b"ok", status)

    def __enter__(self) -> "Receiver":
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the webhook receiver did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(5)
