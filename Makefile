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

.PHONY: all build run test test-kernels soak soak-ci recordings generate check-generated fmt-bpf check-bpf-format deps fuzz vet lint lint-install clean

all: build

# The version and commit tcpfsm version and tcpfsm_build_info show; a
# release's creation time is its commit's (reproducible builds).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 1)
BUILDINFO := github.com/tcpfsm/tcpfsm/internal/buildinfo
VERSION_LDFLAGS = -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).revision=$(REVISION)

build:
	$(GO) build -ldflags "$(VERSION_LDFLAGS)" -o $(BIN) ./cmd/tcpfsm

# Build and trace every TCP state transition on this host. Pass flags
# with ARGS, e.g. make run ARGS="-L 443 -o json".
run: build
	./$(BIN) trace $(ARGS)

# Every test. As root the privileged ones load the BPF programs and make
# traffic in their own network namespaces; without root they skip, unless
# CI=true, where they fail.
# Each test's verdict is printed, so a log shows the privileged ones ran.
# TestMassGracefulClose runs alone, after the rest: while another process
# attaches or detaches a program on inet_sock_set_state (the other
# packages' tests, run beside it by go test), the kernel runs none of the
# tracepoint's programs for some transitions, uncounted anywhere (seen on
# 6.18: 70-330 of 24,000 clients' FIN_WAIT1->FIN_WAIT2->CLOSE, its own
# independent counter short by as many). The agent's reconciliation
# repairs that in the field; this test checks the event stream is whole.
MASS_TEST := ^TestMassGracefulClose$$
test: vet
	$(GO) test -count=1 -v -skip '$(MASS_TEST)' ./... 2>&1 | grep -vE '^=== (RUN|PAUSE|CONT|NAME)|^ +--- PASS: Fuzz[A-Za-z]+/'
	$(GO) test -count=1 -v -run '$(MASS_TEST)' ./tracer/session 2>&1 | grep -vE '^=== (RUN|PAUSE|CONT|NAME)'
	$(GO) -C tools/image test -count=1 -v ./... 2>&1 | grep -vE '^=== (RUN|PAUSE|CONT|NAME)'

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
	$(GO) -C tools/image vet ./...

# golangci-lint, pinned: installed by version from the Go module proxy
# into bin/lint/VERSION (make lint-install), so every machine runs the
# same linters; .golangci.yml says which and why. Both modules are linted
# (tools/image finds the same configuration in its parent directory).
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT_DIR := $(CURDIR)/bin/lint/$(GOLANGCI_LINT_VERSION)
GOLANGCI_LINT ?= $(GOLANGCI_LINT_DIR)/golangci-lint

lint-install: $(GOLANGCI_LINT)
$(GOLANGCI_LINT_DIR)/golangci-lint:
	GOBIN=$(GOLANGCI_LINT_DIR) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run ./...
	cd tools/image && $(GOLANGCI_LINT) run ./...

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

# Static release binaries (the BPF object is embedded) and their sums:
# bin/release/tcpfsm-linux-{amd64,arm64}, bin/release/SHA256SUMS.
RELEASE_ARCHES := amd64 arm64
.PHONY: release image image-reproducible test-image
release:
	rm -rf bin/release && mkdir -p bin/release
	for arch in $(RELEASE_ARCHES); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -buildvcs=false \
			-ldflags "-s -w $(VERSION_LDFLAGS)" -o bin/release/tcpfsm-linux-$$arch ./cmd/tcpfsm || exit 1; \
	done
	cd bin/release && sha256sum $(addprefix tcpfsm-linux-,$(RELEASE_ARCHES)) > SHA256SUMS

# The OCI image, linux/amd64 and linux/arm64 in one index, as an archive
# for podman load, ctr images import, docker load or skopeo copy (see
# deploy/README.md). Built by tools/image (its own module) from the release
# binaries, without a registry or a container daemon. The name is the one
# deploy/kubernetes/daemonset.yaml runs; the version is in the image's
# labels, `tcpfsm version` and tcpfsm_build_info. Push it under a version
# tag (deploy/README.md) or name it otherwise: make image IMAGE=NAME:TAG.
IMAGE ?= localhost/tcpfsm:latest
IMAGE_ARCHIVE := bin/tcpfsm-image.tar
image: release
	$(GO) -C tools/image run . build -o $(CURDIR)/$(IMAGE_ARCHIVE) -name $(IMAGE) \
		-version $(VERSION) -revision $(REVISION) -created $(SOURCE_DATE_EPOCH) \
		$(foreach f,LICENSE $(wildcard bpf/LICENSE.*),-license-file $(CURDIR)/$(f)) \
		$(foreach a,$(RELEASE_ARCHES),-binary linux/$(a)=$(CURDIR)/bin/release/tcpfsm-linux-$(a))

# Build the image a second time from a copy of the sources in another
# directory and fail unless both archives (and so the index digests) are
# identical and no binary holds a build path.
image-reproducible: image
	tools/image/check-reproducible.sh $(IMAGE_ARCHIVE) "$(VERSION)" "$(REVISION)" "$(SOURCE_DATE_EPOCH)" "$(IMAGE)"

# As root: the image's own tests, then load it into podman (runc,
# cgroupfs) and a private containerd, run the agent with only CAP_BPF and
# CAP_PERFMON, make loopback traffic and check /metrics counts it.
test-image: image-reproducible
	TCPFSM_IMAGE_ARCHIVE=$(CURDIR)/$(IMAGE_ARCHIVE) TCPFSM_IMAGE_NAME=$(IMAGE) \
	TCPFSM_IMAGE_VERSION=$(VERSION) TCPFSM_IMAGE_REVISION=$(REVISION) \
		$(GO) -C tools/image test -count=1 -v ./... 2>&1 | grep -vE '^=== (RUN|PAUSE|CONT|NAME)'

# Benchmarks, as root: the BPF programs' cost per event against a bpftrace
# tcpstates equivalent, Go ingest, the end-to-end overhead of tcpfsm agent,
# loss and wakeups at full churn, memory. About 9 minutes; installs bpftrace
# when missing. Output in bench/out/; BENCHMARKS.md has the latest results.
.PHONY: bench
bench:
	bench/bench.sh

# The memory benchmark alone (part of bench): 100,000 real loopback
# connections held open under tcpfsm agent, then closed; about 2 minutes.
.PHONY: bench-memory
bench-memory:
	bench/memory.sh
