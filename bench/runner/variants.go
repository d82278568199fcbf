package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The tracers a phase compares, by name:
//
//	none              no tracer
//	agent             tcpfsm agent, every record logged (to /dev/null: still rendered)
//	agent-tracepoint  the same on the classic tracepoint
//	agent-sampled     the agent logging 1% of its records
//	agent-cpu1        the agent pinned to the server's CPU
//	trace             tcpfsm trace -o json > /dev/null
//	life              tcpfsm life -o json > /dev/null
//	bpftrace          the tcpstates equivalent (bench/tcpstates.bt)
//	agent=PATH, trace=PATH, life=PATH: the same with another build, to compare
//	base-agent, base-trace, base-life: the same with -baseline's build
func startVariant(cfg *config, v string) (*tracer, error) {
	name, path, other := strings.Cut(v, "=")
	c := *cfg
	if other {
		c.agent = path
	}
	if n, ok := strings.CutPrefix(name, "base-"); ok {
		if cfg.baseline == "" {
			return nil, fmt.Errorf("%s: no -baseline build", v)
		}
		name, c.agent = n, cfg.baseline
	}
	switch name {
	case "none":
		return nil, nil
	case "agent":
		return startAgent(&c)
	case "agent-tracepoint":
		return startAgent(&c, "--attach", "tracepoint")
	case "agent-sampled":
		return startAgent(&c, "--log.sample", "0.01")
	case "agent-cpu1":
		return startAgent(&c, fmt.Sprintf("cpu=%d", cfg.serverCPU))
	case "trace", "life":
		return startCLI(&c, name, "-o", "json")
	case "bpftrace":
		return startBpftrace(&c)
	}
	return nil, fmt.Errorf("unknown variant %q", v)
}

// startCLI runs `tcpfsm CMD ARGS...` with its output to /dev/null and
// waits until it says it is tracing (after its programs are attached).
func startCLI(cfg *config, command string, args ...string) (*tracer, error) {
	cmd := exec.Command(cfg.agent, append([]string{command}, args...)...)
	errPath := filepath.Join(cfg.out, command+".stderr")
	errLog, err := os.Create(errPath)
	if err != nil {
		return nil, err
	}
	defer errLog.Close() // the child has its own copy
	cmd.Stderr = errLog  // stdout nil: /dev/null
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &tracer{name: command, cmd: cmd}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(errPath); strings.Contains(string(b), "Ctrl-C to end") {
			return t, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.stop()
	return nil, fmt.Errorf("tcpfsm %s not tracing after 30s (see %s)", command, errPath)
}

// withBaseline adds, after each of -baseline-variants (agent, trace,
// life), the same one with -baseline's build: before and after a change, side by
// side in one run.
func withBaseline(cfg *config, variants []string) []string {
	if cfg.baseline == "" {
		return variants
	}
	var out []string
	for _, v := range variants {
		out = append(out, v)
		if slices.Contains(strings.Split(cfg.baselineVariants, ","), v) {
			out = append(out, "base-"+v)
		}
	}
	return out
}

// workloads are the churn's close modes a phase runs on, in order.
func workloads(cfg *config) ([]string, error) {
	var out []string
	for _, w := range strings.Split(cfg.workloads, ",") {
		switch w = strings.TrimSpace(w); w {
		case "rst", "fin":
			out = append(out, w)
		case "":
		default:
			return nil, fmt.Errorf("workload %q: want rst or fin", w)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no workload")
	}
	return out, nil
}
