"""The /v1/check latency SLO: locust, headless, at a fixed request rate for a fixed time.

    python -m loadtest.slo --rate 200 --duration 30            # own Redis + enforcer, the 5 ms gate
    python -m loadtest.slo --host http://127.0.0.1:8080 --redis-url redis://127.0.0.1:6379/0

Provisions many customers and keys (control.projection.writes, the control plane's Redis writes): 90 % of
the traffic on keys with room (ALLOW), 5 % on keys limited to 6 requests/min (some 429
rate_limited_requests), 5 % on empty prepaid wallets (429 insufficient_balance). Then runs
loadtest/locustfile.py: each task is a check and, for an ALLOW, the usage report.

Without --host it starts a private redis-server and the enforcer (`python -m enforcer.server`) on
free loopback ports and stops them at the end; with --host, --redis-url must be the Redis that
enforcer reads (the keys are provisioned there).

The rate is checks per second: `users` locust users (default rate / 50) each at rate/users tasks
per second (constant_throughput, random start phase), so a slow answer does not slow the
schedule down as long as each user's period is well above the latency; a run that falls under
95 % of the offered rate fails the gate. Before the run, one check per key warms the enforcer's key
cache (steady state). Writes locust's CSV stats (<csv-prefix>_final_stats.csv: the complete
figures; locust's own periodic <csv-prefix>_stats.csv misses up to the last second),
prints the figures, and exits 1 when the /v1/check p99 is over --p99-ms (default 5) or any
request failed unexpectedly (--no-latency-gate keeps only the second condition: the CI smoke run).
The p99 is computed from every check's own latency (locust's CSV rounds to whole milliseconds).
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
MIX = {"ok": 90, "limited": 5, "broke": 5}
# Tasks per second per locust user. Fewer, faster users: locust's own per-user overhead grows
# with the number of users (measured here at 200 checks/s: p50 5.6 ms with 20 users, 1.6 ms with
# 4, a bare geventhttpclient loop 1.0 ms), while a 20 ms period still leaves each user 4x the
# 5 ms SLO before a slow answer could delay its next send.
USER_RATE = 50


def plan_documents(run: str) -> dict[str, dict]:
    charges = [
        {"id": "in", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.000003"},
        {"id": "out", "model": "per_unit", "metric": "output_tokens", "unit_price": "0.000015"},
    ]
    return {
        "ok": {"id": f"lt_{run}_std", "billing_mode": "prepaid", "charges": charges,
               "limits": {"requests_per_minute": 1_000_000, "tokens_per_minute": 10_000_000_000}},
        "limited": {"id": f"lt_{run}_tight", "billing_mode": "prepaid", "charges": charges,
                    "limits": {"requests_per_minute": 2, "tokens_per_minute": 10_000_000_000}},
        "broke": {"id": f"lt_{run}_std", "billing_mode": "prepaid", "charges": charges,
                  "limits": {"requests_per_minute": 1_000_000, "tokens_per_minute": 10_000_000_000}},
    }


async def provision(redis_url: str, customers: int, keys_per_customer: int) -> dict[str, list[str]]:
    """Customers split by MIX (at least one of each kind); returns the API keys by kind."""
    from redis.asyncio import Redis  # noqa: PLC0415

    from control.projection.writes import project_api_key, project_customer, project_plan, set_wallet  # noqa: PLC0415
    from tollgate.keys import api_key_hash  # noqa: PLC0415
    from tollgate.plans import parse_plan  # noqa: PLC0415

    run = uuid.uuid4().hex[:8]
    plans = {kind: parse_plan(doc) for kind, doc in plan_documents(run).items()}
    total = sum(MIX.values())
    counts = {k: max(1, round(customers * v / total)) for k, v in MIX.items() if k != "ok"}
    counts["ok"] = max(1, customers - sum(counts.values()))
    keys: dict[str, list[str]] = {k: [] for k in MIX}
    redis = Redis.from_url(redis_url)
    try:
        for plan in {p.id: p for p in plans.values()}.values():
            await project_plan(redis, plan)
        sem = asyncio.Semaphore(32)

        async def one(kind: str, i: int) -> None:
            async with sem:
                plan = plans[kind]
                customer = f"lt_{run}_{kind}_{i}"
                await project_customer(redis, customer, plan, "prepaid", plan.tiers[0].name)
                await set_wallet(redis, customer, 0 if kind == "broke" else 10**12)
                for j in range(keys_per_customer):
                    key = f"tg_lt_{run}_{kind}_{i}_{j}_{uuid.uuid4().hex[:8]}"
                    await project_api_key(redis, api_key_hash(key), f"k{j}", customer, plan.id, "active")
                    keys[kind].append(key)

        await asyncio.gather(*(one(kind, i) for kind, n in counts.items() for i in range(n)))
    finally:
        await redis.aclose()
    return keys


async def warm_up(host: str, keys: dict[str, list[str]]) -> None:
    """One check per key before the measured run: the enforcer's key cache is warm, as in steady
    state (a cold key costs an extra Redis read)."""
    import httpx  # noqa: PLC0415

    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=host, timeout=10) as client:
        async def one(key: str) -> None:
            async with sem:
                await client.post("/v1/check", json={"api_key": key, "request_id": f"warm_{uuid.uuid4().hex}",
                                                     "estimate": {"requests": 1}})

        await asyncio.gather(*(one(k) for ks in keys.values() for k in ks))


@dataclass
class Services:
    """A private Redis and enforcer, when no --host is given."""

    redis: object | None = None
    enforcer: subprocess.Popen | None = None
    tmp: tempfile.TemporaryDirectory | None = None

    def start(self, workers: int) -> tuple[str, str]:
        import httpx  # noqa: PLC0415

        from tollgate.local_services import free_port, start_redis  # noqa: PLC0415

        self.redis = start_redis()
        self.tmp = tempfile.TemporaryDirectory(prefix="tollgate-slo-")
        port = free_port()
        env = {**os.environ, "TOLLGATE_REDIS_URL": self.redis.url, "TOLLGATE_BUS": "redis",
               "TOLLGATE_SPOOL_PATH": os.path.join(self.tmp.name, "spool.jsonl"), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        log = open(os.path.join(self.tmp.name, "enforcer.log"), "wb")
        self.enforcer = subprocess.Popen(
            [sys.executable, "-m", "enforcer.server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if self.enforcer.poll() is not None:
                raise SystemExit(f"the enforcer exited: {Path(log.name).read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                    return url, self.redis.url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the enforcer did not answer /healthz within 30 s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.enforcer and self.enforcer.poll() is None:
            self.enforcer.terminate()
            try:
                self.enforcer.wait(10)
            except subprocess.TimeoutExpired:
                self.enforcer.kill()
                self.enforcer.wait()
        if self.redis is not None:
            self.redis.stop()
        if self.tmp is not None:
            self.tmp.cleanup()


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not samples:
        return float("nan")
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def read_stats(csv_prefix: str) -> dict[str, dict[str, str]]:
    with open(f"{csv_prefix}_final_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


@dataclass
class Result:
    checks: int
    failures: int
    check_p50: float
    check_p99: float
    check_p999: float
    achieved_rate: float
    failure_messages: list[str]


def evaluate(result: Result, p99_ms: float | None, rate: float | None = None) -> list[str]:
    """Why the run fails the SLO (empty: it passes). p99_ms None: no latency gate. With the
    latency gate, a run that did not keep the offered rate (95 %) fails too: its latencies were
    not measured at that rate."""
    problems = []
    if result.checks == 0:
        problems.append("no /v1/check was sent")
    if result.failures:
        problems.append(f"{result.failures} requests failed unexpectedly: {'; '.join(result.failure_messages[:5])}")
    if p99_ms is not None and not result.check_p99 <= p99_ms:
        problems.append(f"/v1/check p99 {result.check_p99:.2f} ms is over {p99_ms} ms")
    if p99_ms is not None and rate and result.achieved_rate < 0.95 * rate:
        problems.append(f"achieved {result.achieved_rate:.1f} checks/s, under 95 % of the offered {rate:g}/s")
    return problems


def summarize(csv_prefix: str, raw_path: str, duration: float) -> tuple[Result, dict]:
    stats = read_stats(csv_prefix)
    raw = json.loads(Path(raw_path).read_text()) if Path(raw_path).exists() else {"check_ms": [], "outcomes": {}}
    samples = raw["check_ms"]
    failures = sum(int(row["Failure Count"]) for name, row in stats.items() if name != "Aggregated")
    messages = []
    fpath = Path(f"{csv_prefix}_final_failures.csv")
    if fpath.exists():
        with open(fpath, newline="") as f:
            messages = [f"{r['Name']}: {r['Error']} (x{r['Occurrences']})" for r in csv.DictReader(f)]
    result = Result(
        checks=len(samples), failures=failures,
        check_p50=percentile(samples, 50), check_p99=percentile(samples, 99), check_p999=percentile(samples, 99.9),
        achieved_rate=len(samples) / duration if duration else 0.0, failure_messages=messages,
    )
    return result, {"stats": stats, "outcomes": raw["outcomes"]}


def report(result: Result, extra: dict, rate: float, duration: float, users: int) -> str:
    lines = [f"offered {rate:g} checks/s for {duration:g} s over {users} users; achieved {result.achieved_rate:.1f} checks/s"]
    for name in ("/v1/check", "/v1/usage"):
        row = extra["stats"].get(name)
        if row:
            lines.append(f"{name}: {row['Request Count']} requests, {row['Failure Count']} failed; locust ms "
                         f"p50 {row['50%']} p95 {row['95%']} p99 {row['99%']} max {float(row['Max Response Time']):.1f}")
    lines.append(f"/v1/check exact: p50 {result.check_p50:.2f} ms, p99 {result.check_p99:.2f} ms, "
                 f"p99.9 {result.check_p999:.2f} ms")
    if extra["outcomes"]:
        lines.append("outcomes (kind:status:reason): " + ", ".join(f"{k} {v}" for k, v in sorted(extra["outcomes"].items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.slo", description="Locust SLO run for /v1/check")
    p.add_argument("--host", help="enforcer URL (default: start a private Redis + enforcer)")
    p.add_argument("--redis-url", help="the Redis the --host enforcer reads (keys are provisioned there)")
    p.add_argument("--rate", type=float, default=200, help="checks per second (default 200)")
    p.add_argument("--duration", type=float, default=30, help="seconds (default 30)")
    p.add_argument("--users", type=int, help="locust users (default: rate / 50, at least 1)")
    p.add_argument("--customers", type=int, default=200)
    p.add_argument("--keys-per-customer", type=int, default=5)
    p.add_argument("--workers", type=int, default=1, help="enforcer workers when started here")
    p.add_argument("--csv-prefix", default="loadtest/results/slo", help="locust --csv prefix")
    p.add_argument("--p99-ms", type=float, default=5.0)
    p.add_argument("--no-latency-gate", action="store_true", help="fail only on unexpected failures (CI smoke)")
    a = p.parse_args(argv)
    if a.host and not a.redis_url:
        p.error("--host needs --redis-url (the keys are provisioned in that Redis)")
    users = a.users or max(1, math.ceil(a.rate / USER_RATE))
    per_user = a.rate / users

    services = Services()
    try:
        host, redis_url = (a.host, a.redis_url) if a.host else services.start(a.workers)
        keys = asyncio.run(provision(redis_url, a.customers, a.keys_per_customer))
        asyncio.run(warm_up(host, keys))
        Path(a.csv_prefix).parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tollgate-locust-") as tmp:
            keys_path, raw_path = os.path.join(tmp, "keys.json"), os.path.join(tmp, "raw.json")
            Path(keys_path).write_text(json.dumps(keys))
            env = {**os.environ, "TOLLGATE_LOADTEST_KEYS": keys_path, "TOLLGATE_LOADTEST_OUT": raw_path,
                   "TOLLGATE_LOADTEST_USER_RATE": repr(per_user), "TOLLGATE_LOADTEST_CSV": a.csv_prefix}
            cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
                   "-u", str(users), "-r", str(users), "-t", f"{a.duration:g}s", "--stop-timeout", "2",
                   "--csv", a.csv_prefix, "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0"]
            t0 = time.monotonic()
            proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
            elapsed = time.monotonic() - t0
            if not Path(f"{a.csv_prefix}_final_stats.csv").exists():
                print(proc.stdout[-5000:], proc.stderr[-5000:], sep="\n", file=sys.stderr)
                print("error: locust wrote no stats", file=sys.stderr)
                return 1
            result, extra = summarize(a.csv_prefix, raw_path, min(a.duration, elapsed))
    finally:
        services.stop()

    print(report(result, extra, a.rate, a.duration, users))
    print(f"CSV stats: {a.csv_prefix}_final_stats.csv (locust's periodic: {a.csv_prefix}_stats.csv)")
    problems = evaluate(result, None if a.no_latency_gate else a.p99_ms, a.rate)
    if problems:
        for msg in problems:
            print(f"FAIL: {msg}")
        return 1
    print("PASS" + ("" if a.no_latency_gate else f": /v1/check p99 {result.check_p99:.2f} ms <= {a.p99_ms} ms"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
