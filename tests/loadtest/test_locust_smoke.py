"""CI smoke run of the locust SLO command (a few seconds, low rate), so the locustfile and
loadtest/slo.py cannot rot. The latency SLO itself is a benchmark (loadtest/BENCHMARKS.md), not a
CI gate: here only unexpected failures fail the run."""
from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import slo
from tests.servers import run_enforcer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke_run(redis_server, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("locust") / "smoke"
    # a generous Redis deadline: on a busy CI box a fail-open is not what this run is about
    with run_enforcer({"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_CHECK_DEADLINE_MS": "1000",
                       "TOLLGATE_BUS": "redis"}) as enforcer:
        r = subprocess.run(
            [sys.executable, "-m", "loadtest.slo", "--host", enforcer.url, "--redis-url", redis_server.url,
             "--rate", "20", "--duration", "3", "--customers", "20", "--keys-per-customer", "2",
             "--csv-prefix", str(prefix), "--no-latency-gate"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
    return r, prefix


def test_smoke_run_passes_and_writes_stats(smoke_run):
    r, prefix = smoke_run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout and "/v1/check exact: p50" in r.stdout, r.stdout
    with open(f"{prefix}_final_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    check, usage = rows["/v1/check"], rows["/v1/usage"]
    assert int(check["Request Count"]) >= 30  # ~20/s for 3 s
    assert int(check["Failure Count"]) == 0 and int(usage["Failure Count"]) == 0
    assert int(usage["Request Count"]) > 0  # the gateway sequence: a report after each ALLOW
    assert Path(f"{prefix}_stats.csv").exists()  # locust's own CSV too
    assert "ok:200:ok" in r.stdout  # the traffic mix was decided by the enforcer


def test_the_gates_fail_a_run(smoke_run):
    _, prefix = smoke_run
    stats = slo.read_stats(str(prefix))
    result, _ = slo.summarize(str(prefix), "/nonexistent", 3)
    result = dataclasses.replace(result, checks=int(stats["/v1/check"]["Request Count"]), check_p99=1.0)
    assert slo.evaluate(result, 5.0) == []
    assert any("p99" in p for p in slo.evaluate(dataclasses.replace(result, check_p99=5.01), 5.0))
    assert slo.evaluate(dataclasses.replace(result, check_p99=50.0), None) == []  # --no-latency-gate
    failed = dataclasses.replace(result, failures=2, failure_messages=["/v1/check: ok key: unexpected HTTP 500"])
    assert any("failed unexpectedly" in p for p in slo.evaluate(failed, None))
    assert slo.evaluate(dataclasses.replace(result, checks=0), None) == ["no /v1/check was sent"]
    slow = dataclasses.replace(result, achieved_rate=18.0)
    assert any("offered" in p for p in slo.evaluate(slow, 5.0, rate=20))  # fell behind the schedule
    assert slo.evaluate(dataclasses.replace(result, achieved_rate=19.5), 5.0, rate=20) == []


def test_unexpected_failures_make_the_command_exit_non_zero(redis_server, tmp_path):
    """An enforcer that cannot reach Redis fails open on every check: for an SLO about decisions
    that is a failure, and the command says so with a non-zero exit."""
    from tollgate.local_services import free_port

    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    with run_enforcer({"TOLLGATE_REDIS_URL": dead_redis, "TOLLGATE_BUS": "redis"}) as enforcer:
        r = subprocess.run(
            [sys.executable, "-m", "loadtest.slo", "--host", enforcer.url, "--redis-url", redis_server.url,
             "--rate", "10", "--duration", "2", "--customers", "4", "--keys-per-customer", "1",
             "--csv-prefix", str(tmp_path / "bad"), "--no-latency-gate"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL:" in r.stdout and "failed unexpectedly" in r.stdout, r.stdout
