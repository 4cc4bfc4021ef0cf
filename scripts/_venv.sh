# Shared by scripts/run and scripts/test: a project-local virtualenv with the given extra.
ensure_venv() {
  local extra=$1
  # playwright (tests/console) drives Debian's chromium: never download a browser of its own
  export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extra}]" 2>&1 \
    | grep -v "WARNING: Location" || true
}

# The LiteLLM proxy of tests/gateways/test_litellm_proxy.py, in a virtualenv of its own
# (.venv-litellm): litellm[proxy] pins fastapi, uvicorn, orjson... that would fight ours. The tests run
# `.venv-litellm/bin/litellm` as a subprocess with the repository on PYTHONPATH (the callback in
# gateway_plugins/litellm). An exact version: the callback uses its hook signatures and ProxyException.
LITELLM_VERSION=1.108.7
ensure_litellm_venv() {
  local venv=.venv-litellm
  if [ -x "$venv/bin/litellm" ] && "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '${LITELLM_VERSION}')" 2>/dev/null; then
    return 0
  fi
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "litellm[proxy]==${LITELLM_VERSION}" 2>&1 \
    | grep -v "WARNING: Location" || true
}

# The console's chart library (control/console): Chart.js from the npm registry at an exact version,
# packed into the git-ignored .vendor/ and its dist file copied into control/console/static/vendor/
# (also git-ignored). Fetched here, at install time, never at run time; without npm the console
# still works, with tables only.
CHARTJS_VERSION=4.6.1
ensure_console_assets() {
  local dest=control/console/static/vendor/chart.umd.min.js
  [ -s "$dest" ] && grep -q "Chart.js v${CHARTJS_VERSION}" "$dest" && return 0
  if ! command -v npm >/dev/null 2>&1; then
    echo "warning: npm not found: the console shows tables without charts" >&2; return 0
  fi
  mkdir -p .vendor "$(dirname "$dest")"
  local tgz
  if ! tgz=$(cd .vendor && npm pack --silent "chart.js@${CHARTJS_VERSION}" 2>/dev/null | tail -1) || [ -z "$tgz" ]; then
    echo "warning: npm pack chart.js@${CHARTJS_VERSION} failed: the console shows tables without charts" >&2; return 0
  fi
  tar -xzf ".vendor/$tgz" -C .vendor package/dist/chart.umd.min.js && cp .vendor/package/dist/chart.umd.min.js "$dest" \
    || echo "warning: could not unpack .vendor/$tgz: the console shows tables without charts" >&2
}

# Debian packages of the gateway tests, when apt is here (Debian 12 names; each "a|b" takes the
# first one apt can install, an installed one of them satisfies it):
#   nginx                  the nginx binary (the tests run their own, as the current user, on loopback)
#   libnginx-mod-http-lua  lua-nginx-module (OpenResty's; pulls ndk, lua-resty-core, libluajit2)
#   lua-cjson              cjson for LuaJIT: the Kong plugin's JSON inside nginx, and in busted
#   luajit2|luajit         the LuaJIT command busted runs the plugin's unit tests with (--lua=luajit)
#   lua-busted             busted; Debian installs its modules for Lua 5.1 too, so LuaJIT can run it
#   lua-nginx-redis        lua-resty-redis: the Kong plugin's in-gateway mode runs check.lua on Redis itself
#   lua-nginx-string       lua-resty-string (sha256, hex) for the in-gateway mode's key hashing
#   wrk                    the closed-loop half of loadtest/bench_kong_modes.py
#   chromium               the browser the console's Playwright tests drive (/usr/bin/chromium)
#   caddy                  Caddy 2, the forward_auth example's gateway (tests/gateways/test_caddy_forward_auth.py)
# Service start-up is suppressed (policy-rc.d) so no system nginx or caddy starts on port 80.
ensure_system_packages() {
  local wanted="nginx libnginx-mod-http-lua lua-cjson luajit2|luajit lua-busted lua-nginx-redis lua-nginx-string wrk chromium caddy"
  command -v apt-get >/dev/null 2>&1 || return 0
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi
  fi
  installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
  local missing="" group alt ok
  for group in $wanted; do
    ok=""
    for alt in ${group//|/ }; do installed "$alt" && ok=1; done
    [ -n "$ok" ] || missing="$missing $group"
  done
  [ -z "$missing" ] && return 0
  if [ "$sudo" = none ]; then
    echo "warning: not root and no sudo: install the Debian packages${missing//|/ or } for the gateway tests" >&2
    return 0
  fi
  local log
  log=$(mktemp)
  if ! $sudo apt-get update -qq >"$log" 2>&1; then
    echo "warning: apt-get update failed; gateway tests that need${missing//|/ or } will fail:" >&2
    tail -5 "$log" >&2; rm -f "$log"; return 0
  fi
  local pkgs="" cand
  for group in $missing; do
    for alt in ${group//|/ }; do
      cand=$(apt-cache policy "$alt" 2>/dev/null | awk '/Candidate:/ {print $2}')
      if [ -n "$cand" ] && [ "$cand" != "(none)" ]; then pkgs="$pkgs $alt"; break; fi
    done
  done
  local policy_rc="" status=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy_rc=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy_rc" >/dev/null && $sudo chmod +x "$policy_rc"
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $pkgs >"$log" 2>&1 || status=$?
  [ -n "$policy_rc" ] && $sudo rm -f "$policy_rc"
  if [ "$status" != 0 ] || [ -z "$pkgs" ]; then
    echo "warning: could not install$pkgs (wanted${missing//|/ or }); gateway tests that need them will fail:" >&2
    tail -5 "$log" >&2
  fi
  rm -f "$log"
}
