"""The Kong plugin's Lua copy of the OpenAI error table (openai_errors.lua) equals the shared
gateway_plugins/openai_errors.json, read back through LuaJIT and lua-cjson."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

from tests.gateways.harness import KONG_PLUGIN_DIR, MissingTool, ROOT


def test_lua_table_equals_the_shared_json():
    luajit = shutil.which("luajit")
    if not luajit:
        raise MissingTool("luajit is not installed: apt-get install luajit2 (or luajit)")
    env = {**os.environ, "LUA_PATH": f"{KONG_PLUGIN_DIR}/?.lua;;"}
    r = subprocess.run([luajit, "-e", 'io.write(require("cjson").encode(require("kong.plugins.tollgate.openai_errors")))'],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    shared = json.loads((ROOT / "gateway_plugins" / "openai_errors.json").read_text())
    shared.pop("_comment")
    assert json.loads(r.stdout) == shared
