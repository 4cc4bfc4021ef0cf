"""Run the real `tollgate-rater` (python -m rater.service) as a subprocess, for tests and the bench."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.servers import stop_process

ROOT = Path(__file__).resolve().parents[2]


class RaterProcess:
    def __init__(self, env: dict[str, str], args: list[str] | None = None):
        self.env = env
        self.args = args or []
        self.proc: subprocess.Popen | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="tollgate-rater-")
        self.log_path = Path(self._tmp.name) / "rater.log"

    def start(self) -> "RaterProcess":
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "rater.service", *self.args],
                                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_started(self, timeout: float = 30.0) -> "RaterProcess":
        """Until it logs that it consumes (signal handlers are installed by then)."""
        deadline = time.monotonic() + timeout
        while "rater started" not in self.logs():
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the rater did not start:\n{self.logs()[-3000:]}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the rater."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait for the graceful exit; SIGKILL if it hangs."""
        return stop_process(self.proc, timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
