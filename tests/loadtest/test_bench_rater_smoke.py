"""CI smoke runs of the rater benchmarks (a few hundred events), so loadtest/bench_rater.py and
loadtest/bench_ledger_write.py cannot rot. bench_rater runs the production rater (Redis Streams
consumer, pipeline, settle.lua) in worker processes, here over unix sockets (--unix), so that path
is covered too. Figures are not checked (speed is a benchmark, BENCHMARKS.md), only that every
event was rated and each run completed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from tests.conftest import ADMIN_DSN

ROOT = Path(__file__).resolve().parents[2]


def test_bench_rater_small_run_rates_every_event():
    r = subprocess.run(
        [sys.executable, "loadtest/bench_rater.py", "--events", "600", "--customers", "30", "--workers", "2",
         "--batch", "200", "--rate", "200", "--duration", "1", "--ceiling-rows", "600", "--ceiling-evals", "400",
         "--unix", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TOLLGATE_BENCH_PG_DSN": ADMIN_DSN})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    out = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert out["processed"] == 600 and out["ledger_lines"] >= 1200
    assert out["redis_url"].startswith("unix://")
    assert out["throughput_eps"] > 0 and out["lag_events"] == 200
    assert out["pg_copy_rows_per_s"] > 0 and out["redis_evalsha_per_s"] > 0


def test_bench_ledger_write_small_run_prints_both_comparisons():
    r = subprocess.run([sys.executable, "loadtest/bench_ledger_write.py", "--events", "300", "--reps", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TOLLGATE_BENCH_PG_DSN": ADMIN_DSN})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "ratio 0006 / 0002:" in r.stdout and "ratio text / binary:" in r.stdout, r.stdout
