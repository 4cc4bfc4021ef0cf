"""The README's run command on its embedded default: its own Redis and PostgreSQL, the sample plan,
a customer, a key; one check and one usage report, settled by the real rater."""
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tollgate.local_services import free_port

pytestmark = pytest.mark.slow


def test_tollgate_dev_runs_the_whole_system_on_embedded_redis_and_postgres(tmp_path):
    dev = Path(sys.executable).parent / "tollgate-dev"
    out = subprocess.run(
        [str(dev), "--smoke", "--embedded", "--state-dir", str(tmp_path), "--port", str(free_port()),
         "--admin-port", str(free_port())],
        capture_output=True, text=True, timeout=240,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "started a local redis-server" in log
    assert "starting the embedded one (pgserver)" in log
    assert "POST /v1/check -> 200" in log and '"decision":"ALLOW"' in log
    assert "POST /v1/usage -> 202" in log
    assert "smoke test passed" in log


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def test_sigterm_stops_every_service_it_started(tmp_path):
    """`scripts/run` under a process manager ends with SIGTERM: the services it started go with it."""
    import signal
    import time

    dev = Path(sys.executable).parent / "tollgate-dev"
    metrics_port = free_port()
    proc = subprocess.Popen([str(dev), "--embedded", "--state-dir", str(tmp_path), "--port", str(free_port()),
                             "--admin-port", str(free_port()), "--rater-metrics-port", str(metrics_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            seen.append(line)
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        assert any("Ctrl-C stops everything" in x for x in seen), "".join(seen)[-4000:]
        # the rater's Prometheus metrics are served where the banner says
        assert f"http://127.0.0.1:{metrics_port}/metrics" in "".join(seen)
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert "tollgate_rater_events_total" in scraped, scraped[:2000]
        children = _children(proc.pid)
        assert len(children) >= 3, children  # enforcer, rater, control (and the embedded servers)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        alive = {c for c in children if Path(f"/proc/{c}").exists()
                 and Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}
        assert not alive, f"still running after SIGTERM: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
