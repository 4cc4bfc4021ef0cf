"""CI smoke run of loadtest/bench_kong_modes.py (one short step per mode), so the benchmark cannot
rot: real nginx with the plugin in both modes, the enforcer and Redis, every request answered."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_kong_modes_small_run_serves_both_modes():
    r = subprocess.run([sys.executable, "-m", "loadtest.bench_kong_modes", "--rates", "100", "--rounds", "1",
                        "--duration", "1", "--customers", "5", "--timeout-ms", "1000"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    for mode in ("sidecar", "redis"):
        step = re.search(rf"^{mode} @ 100/s .* failed (\d+)  fail-open (\d+) ", r.stdout, re.M)
        assert step, r.stdout
        assert step.groups() == ("0", "0"), step.group(0)  # every request answered 200, none failed open
    assert "in-gateway / sidecar throughput at p99 < 2 ms" in r.stdout
