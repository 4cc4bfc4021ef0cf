"""The README's run command on its embedded default: its own Redis and PostgreSQL, the sample plan,
a customer, a key; one check and one usage report, settled by the real rater."""
import subprocess
import sys
from pathlib import Path

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
