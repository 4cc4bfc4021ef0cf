"""The services on a Redis Cluster, as real processes: their environment, the admin API and the
`tollgate` CLI in subprocesses, and what the tests read back (stream entries, a check's answer)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.servers import ROOT, stop_process
from tests.tenants import DECISION_ENV
from tollgate.keys import EVENTS_STREAM
from tollgate.local_services import LocalCluster, free_port, port_open

TOLLGATE = str(Path(sys.executable).parent / "tollgate")
ADMIN_TOKEN = "cluster-test-token"


def cluster_env(cluster: LocalCluster, pg_dsn: str | None = None) -> dict[str, str]:
    env = {**DECISION_ENV, "TOLLGATE_REDIS_URL": cluster.url, "TOLLGATE_REDIS_CLUSTER": "1",
           "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    if pg_dsn:
        env["TOLLGATE_DATABASE_URL"] = pg_dsn
    return env


def _env(env: dict[str, str]) -> dict[str, str]:
    out = {**os.environ, **env}
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
    return out


@contextlib.contextmanager
def run_admin(env: dict[str, str]):
    """`tollgate admin serve` on a free port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([TOLLGATE, "admin", "serve", "--port", str(port)], env=_env(env), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the admin API did not start:\n{proc.stdout.read()}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, 15)
        out = proc.stdout.read()
        assert "Traceback" not in out, out


def tollgate_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([TOLLGATE, *args], env=_env(env), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def stream_event_ids(redis) -> set[str]:
    """Ids of every event on the bus (the stream lives on one node; any cluster client reads it)."""
    ids, start = set(), "-"
    while entries := await redis.xrange(EVENTS_STREAM, min=start, count=1000):
        ids |= {orjson.loads(fields[b"event"])["id"] for _, fields in entries}
        last = entries[-1][0].decode()
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"
    return ids
