"""Locust: gateway traffic against the enforcer, the way a gateway sends it: POST /v1/check, then
(for an ALLOW) POST /v1/usage with the hold id and the request id as correlation id.

Traffic is spread over many customers and keys of three kinds (provisioned by loadtest/slo.py,
which passes their keys in the JSON file named by TOLLGATE_LOADTEST_KEYS):
- ok:      generous limits and a large wallet: ALLOW expected (a fail-open ALLOW counts as a failure:
           the SLO is about decisions made);
- limited: 2 requests/min per key: ALLOW or 429 rate_limited_requests;
- broke:   prepaid with an empty wallet: 429 insufficient_balance.
Anything else (another status or reason, a 5xx, a refused usage report) is a failure.

Run through `python -m loadtest.slo` (fixed rate, CSV stats, the p99 gate); by hand:
    TOLLGATE_LOADTEST_KEYS=keys.json locust -f loadtest/locustfile.py --host http://127.0.0.1:8080
Environment: TOLLGATE_LOADTEST_USER_RATE (tasks/s per user, default 10),
TOLLGATE_LOADTEST_MIX ("ok=90,limited=5,broke=5"), TOLLGATE_LOADTEST_OUT (where to write the raw
check latencies and the outcome counts at the end), TOLLGATE_LOADTEST_CSV (a --csv prefix: the
complete final stats go to <prefix>_final_stats.csv and _final_failures.csv; locust's own
_stats.csv is rewritten once a second and misses up to the last second of the run).
"""
from __future__ import annotations

import csv
import json
import os
import random
import time
import uuid
from collections import Counter
from datetime import datetime, timezone

import gevent
from locust import FastHttpUser, constant_throughput, events, task
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5", "gpt-4o-mini")
EXPECTED = {  # kind -> {(status, reason)} that are not failures
    "ok": {(200, "ok")},
    "limited": {(200, "ok"), (429, "rate_limited_requests")},
    "broke": {(429, "insufficient_balance")},
}


def _load_keys() -> dict[str, list[str]]:
    path = os.environ.get("TOLLGATE_LOADTEST_KEYS")
    if not path:
        raise SystemExit("TOLLGATE_LOADTEST_KEYS is not set: run `python -m loadtest.slo` (it provisions the keys)")
    with open(path) as f:
        keys = json.load(f)
    return {k: v for k, v in keys.items() if v}


def _mix(kinds) -> tuple[list[str], list[float]]:
    raw = os.environ.get("TOLLGATE_LOADTEST_MIX", "ok=90,limited=5,broke=5")
    weights = {k: float(v) for k, v in (part.split("=") for part in raw.split(",") if part)}
    names = [k for k in kinds if weights.get(k, 0) > 0]
    return names, [weights[k] for k in names]


KEYS = _load_keys()
KINDS, WEIGHTS = _mix(KEYS)
CHECK_MS: list[float] = []
OUTCOMES: Counter = Counter()


USER_RATE = float(os.environ.get("TOLLGATE_LOADTEST_USER_RATE", "10"))


class Gateway(FastHttpUser):
    wait_time = constant_throughput(USER_RATE)

    def on_start(self) -> None:
        # Users start together; without a random phase they would all send in the same instant
        # every period, and the burst (not the offered rate) would set the latency.
        gevent.sleep(random.random() / USER_RATE)

    @task
    def request(self) -> None:
        kind = random.choices(KINDS, WEIGHTS)[0]
        api_key = random.choice(KEYS[kind])
        request_id = f"lt_{uuid.uuid4().hex}"
        model = random.choice(MODELS)
        input_tokens, output_tokens = random.randint(50, 2000), random.choice((64, 256, 1024))
        check = {"api_key": api_key, "request_id": request_id, "dimensions": {"model": model},
                 "estimate": {"requests": 1, "input_tokens": input_tokens, "output_tokens": output_tokens}}
        t0 = time.perf_counter()
        with self.client.post("/v1/check", json=check, name="/v1/check", catch_response=True) as r:
            CHECK_MS.append((time.perf_counter() - t0) * 1000)
            try:
                doc = r.json()
            except Exception:  # noqa: BLE001  (not JSON: a failure, whatever it was)
                doc = {}
            reason = doc.get("reason") if isinstance(doc, dict) else None
            OUTCOMES[f"{kind}:{r.status_code}:{reason}"] += 1
            if (r.status_code, reason) not in EXPECTED[kind]:
                r.failure(f"{kind} key: unexpected HTTP {r.status_code} reason={reason}")
                return
            r.success()
        if r.status_code != 200:
            return
        usage = {
            "event_id": f"evt_{request_id}", "api_key": api_key, "correlation_id": request_id,
            "hold_id": doc.get("hold_id"), "event_type": "llm.completion",
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "properties": {"model": model, "request_type": "standard"},
            "measurements": [{"metric": "input_tokens", "value": input_tokens},
                             {"metric": "output_tokens", "value": random.randint(1, output_tokens)}],
        }
        with self.client.post("/v1/usage", json=usage, name="/v1/usage", catch_response=True) as u:
            if u.status_code != 202:
                u.failure(f"usage report: HTTP {u.status_code}")
            else:
                u.success()


@events.test_stop.add_listener
def _dump(environment, **_kwargs) -> None:
    """Every user has stopped: the stats are final."""
    path = os.environ.get("TOLLGATE_LOADTEST_OUT")
    if path:
        with open(path, "w") as f:
            json.dump({"check_ms": CHECK_MS, "outcomes": dict(OUTCOMES)}, f)
    prefix = os.environ.get("TOLLGATE_LOADTEST_CSV")
    if prefix:
        writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
        with open(f"{prefix}_final_stats.csv", "w", newline="") as f:
            writer.requests_csv(csv.writer(f))
        with open(f"{prefix}_final_failures.csv", "w", newline="") as f:
            writer.failures_csv(csv.writer(f))
