#!/usr/bin/env bash
# Go heap per tracked connection (BenchmarkTrackedMemory: 100k open
# connections, synthetic events) and where it goes: a heap profile taken
# while they are open, inuse_space. Usage: bench/heap.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
OUT=$1
echo "== 5. Go heap per tracked connection (100k open connections, synthetic events)"
TCPFSM_BENCH_HEAPPROFILE="$OUT/tracked.heap" $GO test -run '^$' -bench 'TrackedMemory' -benchtime 1x -o "$OUT/bench-heap.test" ./bench/ | grep -E '^Benchmark'
echo "-- heap in use with them open (inuse_space, top):"
$GO tool pprof -sample_index=inuse_space -top "$OUT/bench-heap.test" "$OUT/tracked.heap" 2>/dev/null | sed -n '4,14p'
