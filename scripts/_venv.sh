# Shared by scripts/run and scripts/test: a project-local virtualenv with the given extra.
ensure_venv() {
  local extra=$1
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extra}]" 2>&1 \
    | grep -v "WARNING: Location" || true
}

# Debian packages of the gateway tests (nginx with lua-nginx-module, LuaJIT), when apt is here.
ensure_system_packages() {
  local pkgs="nginx-light libnginx-mod-http-lua luajit"
  command -v apt-get >/dev/null 2>&1 || return 0
  local missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing) >/dev/null 2>&1 \
      || echo "warning: could not install$missing; gateway tests that need them will fail" >&2
  fi
}
