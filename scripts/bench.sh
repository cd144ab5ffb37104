#!/usr/bin/env bash
# The benchmark (docs/BENCHMARKS.md): starts Redis and Postgres like the tests do, builds
# in release mode and runs benches/e2e/. Options go to the benchmark, e.g.
#   scripts/bench.sh --events 1000000 --workloads insert,update
#   scripts/bench.sh --latency 5000 --seconds 20
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh
ensure_services
cargo bench --locked --bench e2e -- "$@"
