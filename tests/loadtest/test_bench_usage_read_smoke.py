"""CI smoke run of loadtest/bench_usage_read.py (a few thousand ledger lines instead of 10 million),
so the read benchmark cannot rot: it fills, serves, and checks the answer against the ledger."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from tests.conftest import ADMIN_DSN

ROOT = Path(__file__).resolve().parents[2]


def test_bench_usage_read_small_run_answers_as_the_ledger_says():
    r = subprocess.run([sys.executable, "loadtest/bench_usage_read.py", "--lines", "6000", "--customers", "10",
                        "--requests", "5", "--warmup", "1", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TOLLGATE_BENCH_PG_DSN": ADMIN_DSN})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    out = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert out["ledger_lines"] == 6000 and out["requests"] == 5 and out["answer_rows"] > 0
