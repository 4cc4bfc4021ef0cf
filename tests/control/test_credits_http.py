"""Credits over the admin API (in process and the real `tollgate-control` over loopback, whose
credits worker expires grants and raises recharge requests by itself) and the CLI."""
import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from tests.control.conftest import TOKEN, uid
from tests.servers import ControlProcess
from tollgate.keys import CustomerKeys

AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOLLGATE = str(Path(sys.executable).parent / "tollgate")


def _in(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_credits_api(client, customer_id, redis):
    base = f"/admin/customers/{customer_id}"
    r = await client.post(f"{base}/credit-grants", json={"amount": "5", "expires_at": _in(3600), "id": "welcome"},
                          headers=AUTH)
    assert r.status_code == 201, r.text
    g = r.json()
    assert (g["kind"], g["priority"], g["remaining"], g["status"], g["balance"]) == ("promotional", 10, "5.00", "active", "5.00")
    r = await client.post(f"{base}/credit-grants", json={"amount": "5", "expires_at": g["expires_at"], "id": "welcome"},
                          headers=AUTH)
    assert (r.status_code, r.json()["credited"]) == (200, False)
    r = await client.post(f"{base}/credit-grants", json={"amount": "6", "id": "welcome"}, headers=AUTH)
    assert (r.status_code, r.json()["field"]) == (409, "id")
    r = await client.post(f"{base}/credit-grants", json={"amount": "20", "kind": "purchased"}, headers=AUTH)
    assert r.status_code == 201 and r.json()["priority"] == 50

    body = {"amount": "-7.5", "reason": "refund of an overcharge", "id": "adj-1"}
    r = await client.post(f"{base}/wallet/adjustments", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    assert (r.json()["amount"], r.json()["balance"]) == ("-7.50", "17.50")
    r = await client.post(f"{base}/wallet/adjustments", json=body, headers=AUTH)
    assert (r.status_code, r.json()["applied"]) == (200, False)
    r = await client.post(f"{base}/wallet/adjustments", json={"amount": "-100", "reason": "x"}, headers=AUTH)
    assert (r.status_code, r.json()["field"]) == (409, "amount")
    r = await client.get(f"{base}/wallet/adjustments", headers=AUTH)
    assert [a["id"] for a in r.json()["adjustments"]] == ["adj-1"]

    r = await client.get(f"{base}/credit-grants", headers=AUTH)
    assert [(x["id"], x["remaining"], x["status"]) for x in r.json()["credit_grants"]][0] == ("welcome", "0.00", "used")
    r = await client.get(f"{base}/wallet", headers=AUTH)
    w = r.json()
    assert w["balance"] == "17.50" and [x["remaining"] for x in w["credit_grants"]] == ["17.50"]

    r = await client.put(f"{base}/wallet/auto-recharge", json={"threshold": "5", "amount": "25"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["armed"] is True
    r = await client.get(f"{base}/wallet/auto-recharge", headers=AUTH)
    assert (r.json()["threshold"], r.json()["amount"], r.json()["enabled"]) == ("5.00", "25.00", True)
    r = await client.put(f"{base}/wallet/auto-recharge", json={"threshold": "5", "amount": "25", "enabled": False},
                         headers=AUTH)  # off again: control processes of later tests must not request for it
    assert r.json()["enabled"] is False


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", "credit-grants", {"amount": 1.5}, "amount"),
    ("POST", "credit-grants", {"amount": "1", "priority": -1}, "priority"),
    ("POST", "credit-grants", {"amount": "1", "color": "red"}, "color"),
    ("POST", "wallet/adjustments", {"amount": "1"}, "reason"),
    ("POST", "wallet/adjustments", {"amount": "1", "reason": "x", "allow_negative": 1}, "allow_negative"),
    ("PUT", "wallet/auto-recharge", {"threshold": "1"}, "amount"),
])
async def test_bad_input_is_422_naming_the_field(client, customer_id, method, path, body, field):
    r = await client.request(method, f"/admin/customers/{customer_id}/{path}", json=body, headers=AUTH)
    assert (r.status_code, r.json()["field"]) == (422, field)


async def test_unknown_customer_is_404(client):
    for method, path, body in (("POST", "credit-grants", {"amount": "1"}), ("GET", "credit-grants", None),
                               ("POST", "wallet/adjustments", {"amount": "1", "reason": "x"}),
                               ("GET", "wallet/auto-recharge", None)):
        r = await client.request(method, f"/admin/customers/nobody/{path}", json=body, headers=AUTH)
        assert r.status_code == 404, (path, r.text)


async def test_control_process_expires_grants_and_requests_recharges(pg_dsn, redis_server, redis, pg, customer_id):
    proc = ControlProcess({"TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_REDIS_URL": redis_server.url,
                           "TOLLGATE_ADMIN_TOKEN": TOKEN}).start()
    try:
        base = f"/admin/customers/{customer_id}"
        async with httpx.AsyncClient(base_url=proc.url, timeout=10, headers=AUTH) as c:
            assert (await c.post(f"{base}/wallet/topups", json={"amount": "10"})).status_code == 201
            assert (await c.put(f"{base}/wallet/auto-recharge", json={"threshold": "8", "amount": "30"})).status_code == 200
            r = await c.post(f"{base}/credit-grants", json={"amount": "4", "expires_at": _in(1.0)})
            gid = r.json()["id"]
            # 14.00 now, 3.00 of it spent from the grant: 1.00 of it expires, the balance falls to 10.00,
            # still above 8; then a debit takes it to 7.00: one recharge request.
            r = await c.post(f"{base}/wallet/adjustments", json={"amount": "-3", "reason": "usage billed by hand"})
            assert r.json()["balance"] == "11.00"
            for _ in range(60):
                g = (await c.get(f"{base}/credit-grants")).json()["credit_grants"]
                if g[0]["status"] == "expired":
                    break
                await asyncio.sleep(0.1)
            assert (g[0]["id"], g[0]["status"], g[0]["expired_amount"]) == (gid, "expired", "1.00")
            assert (await c.get(f"{base}/wallet")).json()["balance"] == "10.00"
            await c.post(f"{base}/wallet/adjustments", json={"amount": "-3", "reason": "usage billed by hand"})
            for _ in range(40):
                rows = await pg.fetch("SELECT * FROM alerts WHERE customer_id = $1", customer_id)
                if rows:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.2)  # another tick raises nothing more
            rows = await pg.fetch("SELECT * FROM alerts WHERE customer_id = $1", customer_id)
            assert [(a["kind"], a["period"], json.loads(a["payload"])["amount"]) for a in rows] == [
                ("wallet.recharge_requested", "recharge-1", "30.00")]
    finally:
        proc.stop()
    assert "Traceback" not in proc.logs()
    assert int(await redis.get(CustomerKeys(customer_id).wallet)) == 7_000_000


def test_cli_grant_adjust_and_auto_recharge(pg_dsn, redis_server, customer_id):
    env = {**os.environ, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_REDIS_URL": redis_server.url}

    def cli(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
        p = subprocess.run([TOLLGATE, *args], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == expect, (p.stdout, p.stderr)
        return p

    gid = uid("gr")
    out = cli("credits", "grant", "--customer", customer_id, "--amount", "20", "--expires-at", _in(3600),
              "--id", gid, "--note", "launch promo").stdout
    assert f"credit grant {gid} (promotional, priority 10) of 20.00 credited" in out and "balance 20.00" in out
    assert "already given" in cli("credits", "grant", "--customer", customer_id, "--amount", "20", "--id", gid,
                                  "--expires-at", json.loads(cli("credits", "list", "--customer", customer_id,
                                                                 "--json").stdout)[0]["expires_at"]).stdout
    out = cli("wallets", "adjust", "--customer", customer_id, "--amount", "-2.50", "--reason", "SLA credit reversal").stdout
    assert "of -2.50 (SLA credit reversal) applied; balance 17.50" in out
    assert "17.50" in cli("credits", "list", "--customer", customer_id).stdout
    err = cli("wallets", "adjust", "--customer", customer_id, "--amount", "-50", "--reason", "x", expect=2).stderr
    assert "amount" in err
    out = cli("credits", "auto-recharge", "--customer", customer_id, "--threshold", "5", "--amount", "20").stdout
    assert "below 5.00 request a top-up of 20.00 (enabled" in out
    assert "disabled" in cli("credits", "auto-recharge", "--customer", customer_id, "--disable").stdout
    assert "grant(s) expired" in cli("credits", "expire").stdout
