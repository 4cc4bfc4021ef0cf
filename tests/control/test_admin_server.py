"""End to end over loopback: `tollgate admin serve` (uvicorn) in a subprocess, real HTTP."""
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.control.conftest import TOKEN, plan_text, uid
from tollgate.keys import CustomerKeys, api_key_hash, api_key_record
from tollgate.local_services import free_port, port_open

TOLLGATE = str(Path(sys.executable).parent / "tollgate")


@pytest.fixture
def admin_url(pg_dsn, redis_server):
    port = free_port()
    env = {**os.environ, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_REDIS_URL": redis_server.url,
           "TOLLGATE_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen([TOLLGATE, "admin", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "admin API did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert "Traceback" not in out, out


async def test_admin_api_over_http(admin_url, redis):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=admin_url, timeout=10) as c:
        assert (await c.get("/admin/plans")).status_code == 401

        pid = uid("plan")
        r = await c.post("/admin/plans", content=plan_text(pid), headers={**auth, "Content-Type": "application/yaml"})
        assert r.status_code == 201, r.text
        bad = plan_text(uid("plan"), {"hold_ttl_seconds: 300": "hold_ttl_seconds: 0"})
        r = await c.post("/admin/plans", content=bad, headers={**auth, "Content-Type": "application/yaml"})
        assert r.status_code == 422 and r.json()["field"] == "limits.hold_ttl_seconds"

        r = await c.post("/admin/customers", json={"name": "Acme", "plan_id": pid}, headers=auth)
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        r = await c.post(f"/admin/customers/{cid}/keys", headers=auth)
        assert r.status_code == 201
        key = r.json()["api_key"]
        assert await redis.hget(api_key_record(api_key_hash(key)), "status") == b"active"

        for _ in range(2):
            r = await c.post(f"/admin/customers/{cid}/wallet/topups", json={"amount": "7.25", "id": "once"}, headers=auth)
            assert r.json()["balance"] == "7.25"
        assert await redis.get(CustomerKeys(cid).wallet) == b"7250000"
        r = await c.get(f"/admin/customers/{cid}", headers=auth)
        assert r.json()["wallet"]["topups_total"] == "7.25" and r.json()["api_keys"] == {"active": 1, "total": 1}

        r = await c.post("/admin/customers", content=b'{"name": ', headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 400


async def test_the_control_process_bounds_request_heads_like_the_enforcer(admin_url):
    """A head over 32 KiB is 431 and the connection closed (tollgate.http_bounds), not buffered."""
    host, port = admin_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /admin/plans HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (40 * 1024) + b"\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        assert status.startswith(b"HTTP/1.1 431"), status
        await asyncio.wait_for(reader.read(), 10)  # closed by the server
    finally:
        writer.close()
