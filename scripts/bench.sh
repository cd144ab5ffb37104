#!/usr/bin/env bash
# The benchmark (docs/BENCHMARKS.md): starts Redis and Postgres like the tests do, builds
# in release mode and runs benches/e2e/. Options go to the benchmark, e.g.
#   scripts/bench.sh --events 300000                 # all workloads: insert,update,tables200,tx
#   scripts/bench.sh --events 1000000 --workloads insert,update
#   scripts/bench.sh --latency 5000 --seconds 20      # orders table
#   scripts/bench.sh --latency 5000 --seconds 20 --workloads tx   # with and without [transactions]
# Set CARGO_TARGET_DIR to build somewhere of your own while others build.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh
ensure_services
cargo bench --locked --bench e2e -- "$@"
