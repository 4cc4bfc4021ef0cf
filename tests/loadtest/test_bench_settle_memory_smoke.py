"""CI smoke run of loadtest/bench_settle_memory.py (a few thousand events), so it cannot rot.
Figures are not checked beyond what must hold whatever the machine: every event settled, no
outbox field left behind, and the per-request record sizes measured."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]


def test_bench_settle_memory_small_run():
    r = subprocess.run(
        [sys.executable, "loadtest/bench_settle_memory.py", "--events", "3000", "--customers", "50", "--batch", "500",
         "--old-markers", "500", "--checks", "500", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    out = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert out["settled"] == 3000 and out["outbox_fields"] == 0
    assert out["req_bytes"] > 0 and out["hold_bytes"] > 0 and out["old_marker_bytes_per_event"] > 0
