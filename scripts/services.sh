#!/usr/bin/env bash
# Makes sure a Redis and a PostgreSQL are reachable, for the demo and the tests.
#
#   source scripts/services.sh && ensure_services   # sets REDSINK_TEST_REDIS_URL, REDSINK_TEST_POSTGRES_URL
#   scripts/services.sh start | stop
#
# Uses the servers at REDSINK_TEST_REDIS_URL / REDSINK_TEST_POSTGRES_URL when set, else
# 127.0.0.1:6379 and 127.0.0.1:5432 when they answer. Otherwise it starts private ones
# from the installed binaries (installing Debian's redis-server and postgresql packages
# when missing) on free ports, with their state under $REDSINK_SERVICES_DIR
# (default /tmp/redsink-services). `stop` stops only servers this script started.

REDSINK_SERVICES_DIR="${REDSINK_SERVICES_DIR:-/tmp/redsink-services}"

_log() { echo "services: $*" >&2; }

_as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    _log "need root to run: $*"; return 1; fi
}

_apt_install() {
  _log "installing $* from the system packages"
  _as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

_free_port() {
  python3 - <<'EOF' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
}

_redis_ok() { redis-cli -u "$1" ping 2>/dev/null | grep -q PONG; }
_pg_ok() { psql "$1" -tAc 'select 1' >/dev/null 2>&1; }

_pg_bin() {
  local b
  b=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$b" ] && echo "$b"
}

ensure_redis() {
  command -v redis-cli >/dev/null || _apt_install redis-tools redis-server || return 1
  local url="${REDSINK_TEST_REDIS_URL:-}"
  if [ -n "$url" ]; then
    _redis_ok "$url" || { _log "REDSINK_TEST_REDIS_URL=$url does not answer"; return 1; }
    return 0
  fi
  if _redis_ok redis://127.0.0.1:6379; then
    export REDSINK_TEST_REDIS_URL=redis://127.0.0.1:6379
    return 0
  fi
  local dir="$REDSINK_SERVICES_DIR/redis"
  if [ -f "$dir/port" ] && _redis_ok "redis://127.0.0.1:$(cat "$dir/port")"; then
    export REDSINK_TEST_REDIS_URL="redis://127.0.0.1:$(cat "$dir/port")"
    return 0
  fi
  command -v redis-server >/dev/null || _apt_install redis-server || return 1
  mkdir -p "$dir"
  local port
  port=$(_free_port)
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" >/dev/null || return 1
  echo "$port" >"$dir/port"
  for _ in $(seq 50); do _redis_ok "redis://127.0.0.1:$port" && break; sleep 0.1; done
  _redis_ok "redis://127.0.0.1:$port" || { _log "redis did not start: $dir/redis.log"; return 1; }
  _log "started redis on 127.0.0.1:$port"
  REDSINK_SERVICES_STARTED=1
  export REDSINK_TEST_REDIS_URL="redis://127.0.0.1:$port"
}

ensure_postgres() {
  command -v psql >/dev/null || _apt_install postgresql-client || return 1
  local url="${REDSINK_TEST_POSTGRES_URL:-}"
  if [ -n "$url" ]; then
    _pg_ok "$url" || { _log "REDSINK_TEST_POSTGRES_URL=$url does not answer"; return 1; }
    return 0
  fi
  if _pg_ok postgres://postgres@127.0.0.1:5432/postgres; then
    export REDSINK_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres
    return 0
  fi
  local dir="$REDSINK_SERVICES_DIR/postgres"
  if [ -f "$dir/port" ] && _pg_ok "postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"; then
    export REDSINK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
    return 0
  fi
  [ -n "$(_pg_bin)" ] || _apt_install postgresql || return 1
  local bin
  bin=$(_pg_bin)
  # PostgreSQL refuses to run as root: run it as the postgres user when we are root.
  local run=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
    run=(runuser -u postgres --)
  fi
  mkdir -p "$dir"
  chmod 755 "$REDSINK_SERVICES_DIR" "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    "${run[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1 ||
      { _log "initdb failed: $dir/initdb.log"; return 1; }
  fi
  local port
  port=$(_free_port)
  "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null ||
    { _log "postgres did not start: $dir/postgres.log"; return 1; }
  echo "$port" >"$dir/port"
  _log "started postgres on 127.0.0.1:$port"
  REDSINK_SERVICES_STARTED=1
  export REDSINK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

ensure_services() {
  ensure_redis && ensure_postgres
}

stop_services() {
  local dir="$REDSINK_SERVICES_DIR"
  if [ -f "$dir/redis/redis.pid" ]; then
    kill "$(cat "$dir/redis/redis.pid")" 2>/dev/null && _log "stopped redis"
    rm -f "$dir/redis/redis.pid" "$dir/redis/port"
  fi
  if [ -f "$dir/postgres/data/postmaster.pid" ]; then
    local bin run=()
    bin=$(_pg_bin)
    [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
    "${run[@]}" "$bin/pg_ctl" -D "$dir/postgres/data" -m fast stop >/dev/null 2>&1 && _log "stopped postgres"
    rm -f "$dir/postgres/port"
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-start}" in
    start) ensure_services && echo "REDSINK_TEST_REDIS_URL=$REDSINK_TEST_REDIS_URL" &&
      echo "REDSINK_TEST_POSTGRES_URL=$REDSINK_TEST_POSTGRES_URL" ;;
    stop) stop_services ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
  esac
fi
