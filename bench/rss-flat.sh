#!/usr/bin/env bash
# The agent's resident memory under full loopback churn for DURATION
# (default 10m), sampled every 10 s. Root.  Usage: bench/rss-flat.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}
OUT=${BENCH_OUT:-bench/out}
mkdir -p "$OUT"
$GO build -o bin/tcpfsm ./cmd/tcpfsm
$GO build -o bin/churn ./bench/churn
$GO build -o bin/bench-runner ./bench/runner
bin/bench-runner -agent bin/tcpfsm -churn bin/churn -out "$OUT" -phases machine,rss -rss-time "${1:-10m}" | tee "$OUT/rss-flat.log"
