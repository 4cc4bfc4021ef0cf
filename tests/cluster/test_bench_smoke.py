"""loadtest/bench_cluster.py runs end to end (a tiny run: the figures are not checked, only that
each topology answered real decisions)."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.servers import ROOT


def test_bench_cluster_runs():
    done = subprocess.run([sys.executable, "-m", "loadtest.bench_cluster", "--rounds", "1", "--duration", "0.5",
                           "--customers", "20", "--rate", "500", "--workers", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    medians = re.findall(r"^(redis|cluster-1|cluster-3) +\(a\).*real decisions +([\d,]+)/s", done.stdout, re.M)
    assert [name for name, _ in medians] == ["redis", "cluster-1", "cluster-3"], done.stdout
    assert all(int(rate.replace(",", "")) > 0 for _, rate in medians), done.stdout
