"""The busted unit tests of the Kong plugin's pure parts (tests/gateways/busted/*_spec.lua), run
under LuaJIT (the runtime nginx and Kong use), as part of the pytest suite."""
from __future__ import annotations

import os
import re
import subprocess

from tests.gateways.harness import KONG_PLUGIN_DIR, KONG_SHIM_DIR, ROOT, busted_binary

SPEC_DIR = ROOT / "tests" / "gateways" / "busted"


def test_busted_specs_pass_under_luajit():
    env = {**os.environ, "LUA_PATH": f"{KONG_PLUGIN_DIR}/?.lua;{KONG_SHIM_DIR}/?.lua;;"}
    r = subprocess.run([busted_binary(), "--lua=luajit", "-o", "utfTerminal", str(SPEC_DIR)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    m = re.search(r"(\d+) success(?:es)? / (\d+) failures? / (\d+) errors?", out)
    assert m, out
    assert int(m.group(1)) >= 42 and m.group(2) == "0" and m.group(3) == "0", out  # 39 core + 3 schema specs
