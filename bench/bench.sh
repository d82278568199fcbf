#!/usr/bin/env bash
# tcpfsm's benchmarks, as `make bench` runs them (root): the Go ingest and
# memory benchmarks, then the runner's kernel, end-to-end, loss, latency,
# BPF memory and RSS phases. Everything it prints is also in
# $BENCH_OUT/bench.log, the runner's figures in $BENCH_OUT/results.json.
#
# Environment: BENCH_OUT (bench/out), BENCH_ROUNDS (5), BENCH_E2E_TIME (4s),
# BENCH_LOSS_TIME (60s), BENCH_RSS_TIME (120s; bench/rss-flat.sh runs the
# 10-minute one), BENCH_WORKLOADS (rst,fin: the churn's close modes of the
# kernel, e2e and loss phases), BENCH_PHASES (the runner's phases; a short
# run while developing: BENCH_PHASES=machine,kernel,e2e BENCH_ROUNDS=2
# BENCH_GO=0), BENCH_GO (1: the Go ingest and memory benchmarks),
# BENCH_BASELINE (another tcpfsm binary, e.g. main's: the kernel and e2e
# phases run it beside this one as base-agent, base-trace, base-life;
# BENCH_BASELINE_VARIANTS picks which), GO (go).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}
OUT=${BENCH_OUT:-bench/out}
ROUNDS=${BENCH_ROUNDS:-5}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
exec > >(tee "$OUT/bench.log") 2>&1

[ "$(id -u)" = 0 ] || { echo "make bench needs root (BPF, BPF stats, bpftrace)"; exit 1; }
if ! command -v bpftrace >/dev/null; then
	echo "== installing bpftrace (the baseline tracer)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bpftrace >/dev/null
fi
# Classic tracepoints (bpftrace's) need tracefs.
if [ ! -e /sys/kernel/tracing/events ]; then
	mount -t tracefs nodev /sys/kernel/tracing
fi

echo "== command: make bench (bench/bench.sh), rounds=$ROUNDS"
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -r), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $($GO version)"
echo "== git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
echo "== load: $(cat /proc/loadavg)"
$GO build -o bin/tcpfsm ./cmd/tcpfsm
$GO build -o bin/churn ./bench/churn
$GO build -o bin/bench-runner ./bench/runner
$GO build -o bin/hold ./bench/hold

if [ "${BENCH_GO:-1}" = 1 ]; then
echo
echo "== 2. Go ingest (one core: GOMAXPROCS=1, pinned to CPU 1)"
echo "-- synthetic loopback RST churn (8 events per connection):"
taskset -c 1 $GO test -run '^$' -bench 'Ingest' -benchmem -benchtime 2000000x -count 5 -cpu 1 ./bench/ | grep -E '^Benchmark'
echo "-- events recorded from a real churn (tcpfsm record, 20000 connections):"
bin/tcpfsm record --force -w "$OUT/churn.rec" -d 8s -4 >/dev/null 2>"$OUT/record.stderr" &
rec=$!
sleep 3
bin/churn -n 20000 -d 4s >/dev/null
wait $rec
TCPFSM_BENCH_RECORDING=$OUT/churn.rec taskset -c 1 $GO test -run '^$' -bench 'Ingest$' -benchmem -benchtime 2000000x -count 5 -cpu 1 ./bench/ | grep -E '^Benchmark'
echo "-- allocation profile of BenchmarkIngest (alloc_objects, top):"
$GO test -run '^$' -bench 'Ingest$' -benchtime 2000000x -cpu 1 -memprofile "$OUT/ingest.mem" -memprofilerate 1 -o "$OUT/bench.test" ./bench/ >/dev/null
$GO tool pprof -sample_index=alloc_objects -top "$OUT/bench.test" "$OUT/ingest.mem" 2>/dev/null | sed -n '5,12p'

echo
bench/heap.sh "$OUT"
fi

echo
bin/bench-runner -agent bin/tcpfsm -churn bin/churn -hold bin/hold -bpftrace bench/tcpstates.bt -out "$OUT" -rounds "$ROUNDS" \
	-e2e-time "${BENCH_E2E_TIME:-4s}" -loss-time "${BENCH_LOSS_TIME:-60s}" -rss-time "${BENCH_RSS_TIME:-120s}" \
	-workloads "${BENCH_WORKLOADS:-rst,fin}" -baseline "${BENCH_BASELINE:-}" \
	-baseline-variants "${BENCH_BASELINE_VARIANTS:-agent,trace,life}" -phases "${BENCH_PHASES:-machine,kernel,e2e,loss,latency,bpfmem,memory,rss}"

# Where the agent's own CPU goes (section 3 of BENCHMARKS.md): a perf
# profile of it under 5 s of full churn, when perf is installed
# (Debian: linux-perf).
if [ "${BENCH_PERF:-1}" != 1 ]; then
	:
elif command -v perf >/dev/null; then
	echo
	echo "== 3b. profile of tcpfsm agent under full churn (perf record -g, children %)"
	bin/tcpfsm agent --web.listen-address 127.0.0.1:19465 --log.file /dev/null 2>/dev/null &
	agent=$!
	for _ in $(seq 100); do curl -sf http://127.0.0.1:19465/readyz >/dev/null 2>&1 && break; sleep 0.1; done
	perf record -q -o "$OUT/agent.perf" -F 999 -g -p $agent -- sleep 6 >/dev/null 2>&1 &
	perfpid=$!
	# and the client's CPU, the saturated one: the BPF programs' share
	# (bpf_prog_*) and what their helpers cost, beside the kernel's own work
	perf record -q -o "$OUT/cpu0.perf" -F 1999 -C "${BENCH_CLIENT_CPU:-0}" -- sleep 6 >/dev/null 2>&1 &
	perf0=$!
	sleep 0.5
	bin/churn -n 10000000 -d 5s
	wait $perfpid $perf0 || true
	kill -INT $agent; wait $agent || true
	perf report -i "$OUT/agent.perf" --children --sort symbol -g none 2>/dev/null | grep -E '^ +[0-9]' | head -40 | cut -c1-120 || true
	echo
	echo "== 3c. CPU 0 (the churn client's, saturated) under the same churn with the agent (perf record -C 0, self %)"
	perf report -i "$OUT/cpu0.perf" --sort comm,symbol 2>/dev/null | grep -E '^ +[0-9]' | head -40 | cut -c1-120 || true
else
	echo "(perf not installed: no profile of the agent; apt-get install linux-perf)"
fi
