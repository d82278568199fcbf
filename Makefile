# tcpfsm: build, run, test. Privileged targets need root (or CAP_BPF,
# CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN for the test namespaces).

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
BIN := bin/tcpfsm
ARGS ?=

# Debian's clang-19 is the pinned BPF compiler, its clang-format-19 the
# pinned formatter; bpf2go is pinned in go.mod.
BPF_DEPS := clang-19 llvm-19 libbpf-dev clang-format-19
CLANG_FORMAT ?= clang-format-19
BPF_SOURCES := $(wildcard bpf/*.c bpf/*.h)
# One object and its Go bindings per architecture tcpfsm ships (bpf2go
# -target amd64,arm64).
GENERATED := $(foreach arch,x86 arm64,tracer/probe/tcpfsm_$(arch)_bpfel.go tracer/probe/tcpfsm_$(arch)_bpfel.o)

.PHONY: all build run test test-kernels soak soak-ci recordings generate check-generated fmt-bpf check-bpf-format deps fuzz vet clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/tcpfsm

# Build and trace every TCP state transition on this host. Pass flags
# with ARGS, e.g. make run ARGS="-L 443 -o json".
run: build
	./$(BIN) trace $(ARGS)

# Every test. As root the privileged ones load the BPF programs and make
# traffic in their own network namespaces; without root they skip, unless
# CI=true, where they fail.
# Each test's verdict is printed, so a log shows the privileged ones ran.
test: vet
	$(GO) test -count=1 -v ./... 2>&1 | grep -vE '^=== (RUN|PAUSE|CONT|NAME)|^ +--- PASS: Fuzz[A-Za-z]+/'

# The privileged suites again on Debian's 6.1 kernel under qemu (TCG).
test-kernels:
	.ci/kernels/run.sh

# The agent under connection churn: memory, goroutines and files flat,
# nothing lost. soak-ci is the one-minute version CI runs.
soak:
	TCPFSM_SOAK=10m $(GO) test -count=1 -timeout 15m -run '^TestSoak$$' -v ./cmd/tcpfsm
soak-ci:
	TCPFSM_SOAK=60s $(GO) test -count=1 -timeout 5m -run '^TestSoak$$' -v ./cmd/tcpfsm

# Re-capture tracer/testdata/scenarios/*.rec with tcpfsm record (about a
# minute: one recording keeps its TIME_WAIT to the end).
recordings:
	TCPFSM_CAPTURE=$(CURDIR)/tracer/testdata/scenarios $(GO) test -count=1 -run TestCaptureScenarios -v ./cmd/tcpfsm

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

# Install the pinned BPF toolchain (Debian).
deps:
	apt-get install -y -qq $(BPF_DEPS)

# Regenerate the BPF objects and their Go bindings from bpf/.
generate:
	$(GO) generate ./tracer/probe

# Fail when the committed BPF objects are not what bpf/ compiles to: one
# that differs, is not in git, or is generated under a name git does not know.
check-generated: generate
	@extra=$$(git ls-files --others --exclude-standard -- 'tracer/probe/tcpfsm_*bpfe[lb].*'); \
	if ! git diff --exit-code --stat -- $(GENERATED) || [ -n "$$extra" ] || \
		! git ls-files --error-unmatch -- $(GENERATED) >/dev/null 2>&1; then \
		[ -z "$$extra" ] || echo "not in git: $$extra"; \
		echo "generated BPF objects are stale: run make generate and commit them"; exit 1; fi

# Format the BPF C sources with bpf/.clang-format; check-bpf-format (CI)
# fails on any difference.
fmt-bpf:
	$(CLANG_FORMAT) -i --style=file $(BPF_SOURCES)
check-bpf-format:
	@$(CLANG_FORMAT) --dry-run --Werror --style=file $(BPF_SOURCES) || \
		{ echo "bpf/ is not formatted: run make fmt-bpf"; exit 1; }

# Run each fuzzer for FUZZTIME and keep what it found in the checked-in corpus.
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzReader$$' -fuzztime $(FUZZTIME) ./tracer/recording
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./tracer/probe
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./tracer/sockdiag
	$(GO) test -run '^$$' -fuzz '^FuzzParseContainer$$' -fuzztime $(FUZZTIME) ./tracer/cgroups
	$(GO) test -run '^$$' -fuzz '^FuzzAgentConfig$$' -fuzztime $(FUZZTIME) ./cmd/tcpfsm
	@for t in tracer/recording:FuzzReader tracer/probe:FuzzDecode tracer/sockdiag:FuzzParse tracer/cgroups:FuzzParseContainer cmd/tcpfsm:FuzzAgentConfig; do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		src=$$($(GO) env GOCACHE)/fuzz/github.com/tcpfsm/tcpfsm/$$pkg/$$name; \
		mkdir -p $$pkg/testdata/fuzz/$$name; \
		[ -d $$src ] && cp -n $$src/* $$pkg/testdata/fuzz/$$name/ || true; \
	done

clean:
	rm -rf bin

# Benchmarks, as root: the BPF programs' cost per event against a bpftrace
# tcpstates equivalent, Go ingest, the end-to-end overhead of tcpfsm agent,
# loss and wakeups at full churn, memory. About 9 minutes; installs bpftrace
# when missing. Output in bench/out/; BENCHMARKS.md has the latest results.
.PHONY: bench
bench:
	bench/bench.sh
