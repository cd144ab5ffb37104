#!/usr/bin/env bash
# The demo: starts Redis and PostgreSQL when they are not running (installing them when
# missing), creates the example replica database, feeds sample Debezium events into the
# example streams, runs `redsink run --config config/redsink.toml` until every entry is
# applied and acknowledged, and shows the synced rows.
#
#   scripts/demo.sh            # sync, show, stop
#   scripts/demo.sh --follow   # keep syncing until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
follow=false
[ "${1:-}" = "--follow" ] && follow=true

# shellcheck source=scripts/services.sh
source scripts/services.sh
ensure_services
redis_url="$REDSINK_TEST_REDIS_URL"
pg_admin="$REDSINK_TEST_POSTGRES_URL"
pg_replica="${pg_admin%/*}/replica"

echo "== building redsink (a first build takes a few minutes)"
cargo build --bin redsink
bin=target/debug/redsink

echo "== creating the replica database and its tables (config/demo/replica.sql)"
psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS replica WITH (FORCE)" -c "CREATE DATABASE replica"
psql -q "$pg_replica" -v ON_ERROR_STOP=1 -f config/demo/replica.sql

echo "== feeding sample Debezium events into Redis"
for key in $(redis-cli -u "$redis_url" --scan --pattern 'dbserver1.inventory.*') \
           $(redis-cli -u "$redis_url" --scan --pattern 'shop.public.orders:*'); do
  redis-cli -u "$redis_url" DEL "$key" >/dev/null
done
"$bin" produce --redis-url "$redis_url" --file config/demo/inventory.jsonl
"$bin" produce --redis-url "$redis_url" --generate-orders 20000 --keys 5000 --delete-every 50 \
  --stream shop.public.orders --shards 8

echo "== running: redsink run --config config/redsink.toml"
export REDSINK_REDIS_URL="$redis_url" REDSINK_POSTGRES_URL="$pg_replica"
"$bin" run --config config/redsink.toml &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT

# Synced = on every stream the group has read everything (lag 0) and acked it (pending 0).
synced() {
  local s info n=0
  for s in $(redis-cli -u "$redis_url" --scan --pattern 'dbserver1.inventory.*') \
           $(redis-cli -u "$redis_url" --scan --pattern 'shop.public.orders:*'); do
    case "$s" in *:dlq) continue ;; esac
    n=$((n + 1))
    info=$(redis-cli -u "$redis_url" XINFO GROUPS "$s" | tr '\n' ' ')
    echo "$info" | grep -q 'name redsink' || return 1
    echo "$info" | grep -Eq 'pending 0 .*lag 0' || return 1
  done
  [ "$n" -gt 0 ]
}
for _ in $(seq 600); do
  synced && break
  kill -0 $pid 2>/dev/null || { echo "redsink exited early" >&2; exit 1; }
  sleep 0.2
done
synced || { echo "not synced after 120 s" >&2; exit 1; }
echo "== synced; the replica now holds:"
psql "$pg_replica" -P pager=off <<'SQL'
SELECT id, name, price, size, tags, attrs, created_on, updated_at, cutoff, sku, flags, ip,
       length(manual) AS manual_len
  FROM inventory.products ORDER BY id;
SELECT id, first_name, last_name, email, length(bio) AS bio_len FROM inventory.customers ORDER BY id;
SELECT order_id, line, product_id, qty FROM inventory.order_lines ORDER BY 1, 2;
SELECT count(*) AS orders, sum(amount) AS total_amount, max(updated_at) AS last_update FROM public.orders;
SQL
dead=0
for s in $(redis-cli -u "$redis_url" --scan --pattern 'dbserver1.inventory.*:dlq') \
         $(redis-cli -u "$redis_url" --scan --pattern 'shop.public.orders:*:dlq'); do
  dead=$((dead + $(redis-cli -u "$redis_url" XLEN "$s")))
done
echo "dead letters: $dead"

if $follow; then
  echo "== following; Ctrl-C stops"
  wait $pid
else
  kill -TERM $pid
  wait $pid
  trap - EXIT
  echo "== redsink stopped cleanly"
  if [ -f "$REDSINK_SERVICES_DIR/redis/port" ] || [ -f "$REDSINK_SERVICES_DIR/postgres/port" ]; then
    echo "servers started for the demo keep running; stop them with scripts/services.sh stop"
  fi
  # The exact environment the next commands need (the config's URLs may not be these).
  echo "== next: the same servers with any command, e.g."
  echo "   export REDSINK_REDIS_URL=$redis_url REDSINK_POSTGRES_URL=$pg_replica"
  echo "   $bin status --config config/redsink.toml"
  echo "   psql $pg_replica"
fi
