"""A CI smoke run of loadtest/bench_check.py (a second per step), so the script cannot rot. Figures
are not checked (speed is a benchmark, BENCHMARKS.md); what must hold at any speed is: every step
printed its columns, and no hold was orphaned."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_check_small_run_prints_every_column_and_orphans_nothing():
    r = subprocess.run([sys.executable, "-m", "loadtest.bench_check", "--rates", "200,400", "--duration", "1",
                        "--customers", "5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    steps = [line for line in r.stdout.splitlines() if line.startswith("(b) HTTP /v1/check @")]
    floor = [line for line in r.stdout.splitlines() if line.startswith("(f) floor")]
    assert len(steps) == 2 and len(floor) == 2, r.stdout
    assert all("fail-open" in s and "orphaned holds 0" in s and "p99.9" in s for s in steps), r.stdout
    assert "# orphaned holds, all steps: 0" in r.stdout and "# same-run comparison" in r.stdout, r.stdout
