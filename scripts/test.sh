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
cargo test --locked "$@"
