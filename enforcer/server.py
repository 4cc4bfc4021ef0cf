"""`tollgate-enforcer`: the enforcer on uvicorn (uvloop, httptools, no access log).

Configuration is the TOLLGATE_* environment (tollgate.config, enforcer.config); the command line
only says where to listen and how many worker processes to run. The HTTP protocol is uvicorn's
httptools one with bounds on the request head's size and read time (tollgate.http_bounds);
TOLLGATE_HTTP_BOUNDS=0 runs uvicorn's own instead (an escape hatch, and the A/B benchmark's
baseline: loadtest/bench_http_bounds.py).
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile

import uvicorn

from tollgate.http_bounds import BoundedHttpToolsProtocol


def from_env():
    """The uvicorn factory: one app per worker process, configured from the environment."""
    from enforcer.app import create_app  # noqa: PLC0415  (after PROMETHEUS_MULTIPROC_DIR is set)

    return create_app()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="tollgate-enforcer", description="Tollgate quota enforcer (/v1/check, /v1/usage)")
    p.add_argument("--host", default=os.environ.get("TOLLGATE_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("TOLLGATE_PORT", "8080")))
    p.add_argument("--workers", type=int, default=int(os.environ.get("TOLLGATE_WORKERS", "1")))
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its samples here; /metrics on any worker sums them.
        d = tempfile.mkdtemp(prefix="tollgate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = d
        atexit.register(shutil.rmtree, d, True)
    http = "httptools" if os.environ.get("TOLLGATE_HTTP_BOUNDS", "1") == "0" else BoundedHttpToolsProtocol
    uvicorn.run(
        "enforcer.server:from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
        loop="uvloop", http=http, lifespan="on", access_log=False, log_level=args.log_level,
        backlog=4096, timeout_keep_alive=75, proxy_headers=False, server_header=False,
    )


if __name__ == "__main__":
    main()
