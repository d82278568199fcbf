#!/usr/bin/env bash
# The memory benchmark alone (`make bench-memory`, root): the Go heap per
# tracked connection with its heap profile (synthetic events), then
# `tcpfsm agent` at its default settings while bench/hold opens
# BENCH_MEM_PAIRS (50000) real loopback connection pairs in a fresh network
# namespace, holds them and closes them (bench/runner's memory phase).
# Output in $BENCH_OUT (bench/out): memory.log, results-memory.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}
OUT=${BENCH_OUT:-bench/out}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
exec > >(tee "$OUT/memory.log") 2>&1
[ "$(id -u)" = 0 ] || { echo "bench-memory needs root (BPF, network namespaces)"; exit 1; }
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -r), $(nproc) CPUs, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with local changes)'), load $(cut -d' ' -f1-3 /proc/loadavg)"
$GO build -o bin/tcpfsm ./cmd/tcpfsm
$GO build -o bin/hold ./bench/hold
$GO build -o bin/bench-runner ./bench/runner
bench/heap.sh "$OUT"
mkdir -p "$OUT/memory"
bin/bench-runner -agent bin/tcpfsm -hold bin/hold -out "$OUT/memory" -phases machine,memory \
	-mem-pairs "${BENCH_MEM_PAIRS:-50000}" -mem-close "${BENCH_MEM_CLOSE:-rst}" -mem-settle "${BENCH_MEM_SETTLE:-20s}"
