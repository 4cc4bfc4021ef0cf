"""schemathesis against the real enforcer (a subprocess on a real Redis, with a provisioned tenant)
and the real admin API (`tollgate admin serve` on the session's PostgreSQL and Redis), over
loopback: no 5xx, and every answer's status, content type, headers and body as documented.

About half the generated requests carry real credentials and ids (the tenant's API key, the
admin token, an existing plan and customer), so the checks reach the decisions, holds, usage
events and database rows, not only the 4xx of unknown keys and ids.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import yaml

from enforcer.openapi import SPEC as ENFORCER_SPEC
from control.http.openapi import SPEC as ADMIN_SPEC
from tests.control.conftest import TOKEN, plan_text
from tests.openapi.fuzz import fuzz, load
from tests.servers import run_enforcer, stop_process
from tests.tenants import DECISION_ENV, provision, uid
from tollgate.local_services import free_port, port_open
from tollgate.openapi import documented_operations

pytestmark = pytest.mark.slow
TOLLGATE = str(Path(sys.executable).parent / "tollgate")


def _turns(n: int):
    """0, 1, ..., n-1, 0, ...: which variant the next case gets (deterministic: so is the generation)."""
    return itertools.cycle(range(n)).__next__


def _as_sent_by_a_client(body: dict) -> dict:
    """What the schema cannot say but the validators refuse (400): counts written as 3.0, and a
    metric twice in one report. Straightened out so that valid reports reach the 202 path."""
    body = dict(body)
    if isinstance(body.get("estimate"), dict):
        body["estimate"] = {k: int(v) if isinstance(v, float) and v.is_integer() else v
                            for k, v in body["estimate"].items()}
    if isinstance(body.get("measurements"), list):
        seen, kept = set(), []
        for m in body["measurements"]:
            if isinstance(m, dict):
                m = dict(m)
                if isinstance(m.get("value"), float) and m["value"].is_integer():
                    m["value"] = int(m["value"])
                if isinstance(m.get("metric"), str):
                    if m["metric"] in seen:
                        continue
                    seen.add(m["metric"])
            kept.append(m)
        body["measurements"] = kept
    return body


# --------------------------------------------------------------------------- the enforcer


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tenant(redis_server):
    import redis.asyncio as aioredis  # noqa: PLC0415

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        # a small wallet: the generated estimates soon run it dry, so DENYs (429) are answered too
        return await provision(client, wallet=50_000_000, requests_per_minute=200)
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def enforcer_url(tenant, redis_server):
    with run_enforcer({"TOLLGATE_REDIS_URL": redis_server.url, **DECISION_ENV}) as server:
        yield server.url
        assert "Traceback" not in server.logs(), server.logs()


@pytest.mark.parametrize("method,path", sorted(documented_operations(ENFORCER_SPEC)))
def test_enforcer_answers_as_documented(enforcer_url, tenant, method, path):
    turn = _turns(4)

    def prepare(case):
        variant = turn()
        if method == "GET" and path == "/v1/check":  # the forward-auth check: its fields in headers
            if variant:
                # variant 1: a key nobody has (401), else the tenant's
                headers = {**(case.headers or {}), "X-Api-Key": uid("tg_unknown") if variant == 1 else tenant.api_key}
                headers.pop("Authorization", None)
                # added where absent, never replacing a generated value (a negative case stays negative)
                headers.setdefault("X-Tollgate-Request-Id", uid("req"))
                if variant == 3:  # the small wallet: DENY
                    headers.setdefault("X-Tollgate-Estimate-Input-Tokens", str(10**9))
                case.headers = headers
            return
        if not isinstance(case.body, dict) or variant == 0:
            return  # as generated (a random key: 401, or invalid input: 4xx)
        # New objects, assigned: schemathesis then validates the changed case again (a negative
        # case may have become valid), which it does not notice for a change in place.
        body = {**case.body, "api_key": tenant.api_key}
        if variant >= 2:
            body = _as_sent_by_a_client(body)
        if variant == 3 and path == "/v1/check" and isinstance(body.get("estimate", {}), dict):
            body["estimate"] = {**body.get("estimate", {}), "input_tokens": 10**9}  # the small wallet: DENY
        case.body = body

    statuses = fuzz(load(enforcer_url), method, path, enforcer_url, prepare)
    print(method, path, dict(statuses))
    # the run went past the refusals: answers of the kinds that change state came too
    assert set(statuses) >= {"/v1/check": {200, 429, 401, 400}, "/v1/usage": {202, 401, 400}}.get(path, {200})


# --------------------------------------------------------------------------- the admin API


@pytest.fixture(scope="module")
def admin_url(pg_dsn, redis_server, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_REDIS_URL": redis_server.url,
           "TOLLGATE_ADMIN_TOKEN": TOKEN}
    log_path = tmp_path_factory.mktemp("admin") / "admin.log"
    with open(log_path, "wb") as log:  # a file, not a pipe: nobody reads a pipe while the tests run
        proc = subprocess.Popen([TOLLGATE, "admin", "serve", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "admin API did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, 15)
    out = log_path.read_text(errors="replace")
    assert "Traceback" not in out, out[-20000:]


@pytest.fixture(scope="module")
def admin_ids(admin_url, pg_dsn) -> dict[str, str]:
    """A plan, a customer on it and one of its keys, a webhook, a delivery and a second plan, made
    through the API; an invoice of the customer and a request it made, written straight to
    PostgreSQL (the rater's tables)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=admin_url, headers=auth, timeout=10) as c:
        pid = uid("plan")
        r = c.post("/admin/plans", content=plan_text(pid), headers={"Content-Type": "application/yaml"})
        assert r.status_code == 201, r.text
        r = c.post("/admin/customers", json={"name": "Fuzz", "plan_id": pid})
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        r = c.post(f"/admin/customers/{cid}/keys")
        assert r.status_code == 201, r.text
        key = r.json()
        r = c.post("/admin/webhooks", json={"url": DEAD_HOOK, "customer_id": cid})
        assert r.status_code == 201, r.text
        hook = r.json()["id"]
        r = c.post(f"/admin/customers/{cid}/teams", json={"name": "Fuzz team"})  # the billing hierarchy
        assert r.status_code == 201, r.text
        team = r.json()["id"]
        r = c.post(f"/admin/customers/{cid}/apps", json={"name": "Fuzz agent", "team_id": team, "kind": "agent"})
        assert r.status_code == 201, r.text
        app = r.json()["id"]
        # a prepaid customer only the auto-recharge cases use: the lifecycle cases may turn the first
        # one postpaid or archive it, whichever order the operations run in
        r = c.post("/admin/customers", json={"name": "Fuzz prepaid", "plan_id": pid, "billing_mode": "prepaid"})
        assert r.status_code == 201, r.text
        prepaid = r.json()["id"]
        other = uid("plan")  # for plan changes
        r = c.post("/admin/plans", content=plan_text(other), headers={"Content-Type": "application/yaml"})
        assert r.status_code == 201, r.text
        catalog = uid("cat")
        r = c.post("/admin/cost-catalogs", json=catalog_doc(catalog))
        assert r.status_code == 201, r.text
    correlation, invoice = f"req_{cid}", f"inv_200001_{cid}"

    async def billed() -> None:
        import asyncpg  # noqa: PLC0415

        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("INSERT INTO processed_events (event_id, kind, customer_id, period, correlation_id)"
                               " VALUES ($1, 'usage', $2, '200001', $3)", f"evt_{cid}", cid, correlation)
            await conn.execute("INSERT INTO ledger_lines (event_id, line_no, correlation_id, customer_id, plan_id, period,"
                               " kind, charge_id, metric, quantity, amount_micros) VALUES ($1, 0, $2, $3, $4, '200001',"
                               " 'usage', 'input_tokens', 'input_tokens', 10, 30)", f"evt_{cid}", correlation, cid, pid)
            await conn.execute("INSERT INTO invoices (id, customer_id, period, plan_id, currency, billing_mode,"
                               " subtotal_micros, discount_micros, tax_micros, total_micros, prepaid_micros,"
                               " amount_due_micros) VALUES ($1, $2, '200001', $3, 'USD', 'postpaid', 30, 0, 0, 30, 0, 30)",
                               invoice, cid, pid)
            await conn.execute("INSERT INTO invoice_lines (invoice_id, line_no, kind, charge_id, metric, dimension_key,"
                               " description, quantity, amount_micros, ledger_kinds, ledger_lines) VALUES ($1, 0, 'usage',"
                               " 'input_tokens', 'input_tokens', 'default', 'input tokens', 10, 30, '{usage}', 1)", invoice)
            await conn.execute("INSERT INTO agent_sessions (customer_id, session_id, first_ts, last_ts, idle_at, period,"
                               " measurements, event_count) VALUES ($1, 'ses_fuzz', now(), now(), now(), '200001',"
                               " '{\"input_tokens\": 10}', 1)", cid)
        finally:
            await conn.close()

    asyncio.run(billed())
    return {"plan": pid, "customer": cid, "key": key["id"], "api_key": key["api_key"], "invoice": invoice,
            "correlation": correlation, "other_plan": other, "webhook": hook, "catalog": catalog, "team": team,
            "app": app, "prepaid": prepaid,
            "delivery": _delivery(pg_dsn, cid, admin_url)}


def catalog_doc(catalog_id: str) -> dict:
    return {"id": catalog_id, "currency": "USD", "costs": {"input_tokens": "0.000002"}}


DEAD_HOOK = "http://127.0.0.1:9/hook"  # discard port: nothing listens, deliveries stay pending


def _delivery(pg_dsn: str, customer_id: str, admin_url: str) -> str:
    """An alert raised for the customer, and the id of its delivery once the served process's
    worker has fanned it out (the admin API only reads and redelivers deliveries)."""
    import asyncio  # noqa: PLC0415

    import asyncpg  # noqa: PLC0415

    from tollgate.alerts import raise_alert  # noqa: PLC0415

    async def go() -> str:
        conn = await asyncpg.connect(pg_dsn)
        try:
            async with conn.transaction():
                await raise_alert(conn, customer_id, "spend.threshold", "50", "202612", {"percent": 50})
            deadline = time.monotonic() + 10
            while (d := await conn.fetchval("SELECT id FROM webhook_deliveries WHERE customer_id = $1",
                                            customer_id)) is None:
                assert time.monotonic() < deadline, "the alert was not fanned out"
                await asyncio.sleep(0.05)
            return d
        finally:
            await conn.close()
    return asyncio.run(go())


# Changes that name the customer's version (If-Match): with real ids they get the current one.
LIFECYCLE = {("PATCH", "/admin/customers/{id}"), *(("POST", f"/admin/customers/{{id}}/{a}")
                                                   for a in ("plan-change", "suspend", "reactivate", "archive"))}


def _current(admin_url: str, admin_ids: dict, path: str, case) -> None:
    """The customer's ETag as If-Match; archive works on a customer of its own (it is final),
    reactivate on a suspended one; a plan change goes to the plan the customer is not on."""
    with httpx.Client(base_url=admin_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as c:
        cid = case.path_parameters["id"]
        if path.endswith("/archive"):
            cid = c.post("/admin/customers", json={"name": "Archived", "plan_id": admin_ids["plan"]}).json()["id"]
            case.path_parameters = {**case.path_parameters, "id": cid}
        r = c.get(f"/admin/customers/{cid}")
        if path.endswith("/reactivate") and r.json()["status"] == "active":  # something to reactivate
            r = c.post(f"/admin/customers/{cid}/suspend", headers={"If-Match": r.headers["etag"]})
    case.headers = {**case.headers, "If-Match": r.headers["etag"]}
    if isinstance(case.body, dict):
        v = case.body.get("version")
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:  # an invalid one stays invalid
            case.body["version"] = r.json()["version"]
        if "plan_id" in case.body:
            case.body["plan_id"] = admin_ids["other_plan"] if r.json()["plan_id"] == admin_ids["plan"] else admin_ids["plan"]


@pytest.mark.parametrize("method,path", sorted(documented_operations(ADMIN_SPEC)))
def test_admin_api_answers_as_documented(admin_url, admin_ids, method, path):
    real_id = admin_ids["key"] if path.startswith("/admin/keys/") else \
        admin_ids["plan"] if path.startswith("/admin/plans/") else \
        admin_ids["catalog"] if path.startswith("/admin/cost-catalogs/") else \
        admin_ids["invoice"] if "/invoices/" in path else \
        admin_ids["webhook"] if path.startswith("/admin/webhooks/") else \
        admin_ids["delivery"] if path.startswith("/admin/deliveries/") else \
        admin_ids["team"] if path.startswith("/admin/teams/") else \
        admin_ids["app"] if path.startswith("/admin/apps/") else admin_ids["customer"]
    # The customer-scoped read API takes the customer's own API key, not the admin token.
    bearer = admin_ids["api_key"] if path.startswith("/v1/customer/") else TOKEN

    turn = _turns(3)

    def prepare(case):
        variant = turn()
        if variant == 0:
            return  # no token (401), unless generated
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {bearer}"}
        if variant == 2:  # else the generated ids: mostly unknown (404)
            if case.path_parameters and "id" in case.path_parameters:
                case.path_parameters = {**case.path_parameters, "id": real_id}
            if case.path_parameters and "correlation_id" in case.path_parameters:
                case.path_parameters = {**case.path_parameters, "correlation_id": admin_ids["correlation"]}
            if case.path_parameters and "session_id" in case.path_parameters:
                case.path_parameters = {**case.path_parameters, "session_id": "ses_fuzz"}
            if case.path_parameters and "line_no" in case.path_parameters:
                case.path_parameters = {**case.path_parameters, "line_no": "0"}
            if isinstance(case.body, dict) and "plan_id" in case.body:
                case.body = {**case.body, "plan_id": admin_ids["plan"]}
            if isinstance(case.body, dict) and "team_id" in case.body:  # the customer's own team, app
                case.body = {**case.body, "team_id": admin_ids["team"]}
            if isinstance(case.body, dict) and "app_id" in case.body:
                case.body = {**case.body, "app_id": admin_ids["app"]}
            if path == "/admin/webhooks" and method == "POST" and isinstance(case.body, dict):
                case.body = {**case.body, "url": DEAD_HOOK, "customer_id": admin_ids["customer"]}
            if (method, path) in LIFECYCLE and case.path_parameters.get("id") == real_id:
                _current(admin_url, admin_ids, path, case)
            if path.endswith("/wallet/auto-recharge"):
                case.path_parameters = {**case.path_parameters, "id": admin_ids["prepaid"]}
                if method == "PUT" and isinstance(case.body, dict):  # generated money strings are mostly not money
                    case.body = {**case.body, "threshold": "5.00", "amount": "20.00"}
            if path == "/admin/cost-catalogs" and method == "POST":  # a real catalog, generated fields on top
                case.media_type = "application/json"
                case.body = {**catalog_doc(uid("cat")), **(case.body if isinstance(case.body, dict) else {})}
            if path == "/admin/simulate":  # the customer's plan as the draft, over a period with an invoice
                if isinstance(case.body, dict):  # an invalid body (not an object) stays invalid
                    case.media_type = "application/json"
                    case.body = yaml.safe_load(plan_text(admin_ids["plan"]))
                case.query = {"period": "200001", "customers": admin_ids["customer"], **(case.query or {})}
            if path == "/admin/plans" and method == "POST":  # a real plan, with what was generated on top
                case.media_type = "application/json"
                case.body = {**yaml.safe_load(plan_text(uid("plan"))),
                             **(case.body if isinstance(case.body, dict) else {})}

    statuses = fuzz(load(admin_url), method, path, admin_url, prepare)
    print(method, path, dict(statuses))
    assert any(200 <= s < 300 for s in statuses), statuses  # real work was done, not only refusals
    if path not in ("/openapi.json", "/metrics"):  # the two served without a token
        assert 401 in statuses, statuses
