// Command runner drives tcpfsm's benchmarks that need the kernel: the BPF
// programs' cost per event, end-to-end throughput with and without
// tracers, loss and wakeups at full churn, delivery latency, BPF map
// memory and resident memory over time. `make bench` runs it as root; it
// writes what it measures to stdout and, as JSON, to -out/results.json.
//
// All traffic is the churn load generator's, on loopback; every loop is
// bounded in count and time.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

type config struct {
	agent, churn, script, out string
	agentAddr                 string
	clientCPU, serverCPU      int
	rounds                    int
	kernelConns               uint64
	e2eTime                   time.Duration
	lossTime                  time.Duration
	rssTime                   time.Duration
	latencyTime               time.Duration
	latencyRate               float64
	kernelVariants            string
	e2eVariants               string
	baseline                  string // another build of tcpfsm, run beside -agent's as base-*
	baselineVariants          string
	workloads                 string // close modes of the churn: rst, fin
	close                     string // the one a phase runs now
	warmup                    time.Duration
	hold, memClose            string
	memPairs                  int
	memSettle                 time.Duration
}

// results collects every figure for results.json.
var results = map[string]any{}

func main() {
	var cfg config
	phases := flag.String("phases", "machine,kernel,e2e,loss,latency,bpfmem", "comma-separated phases: machine, kernel, e2e, loss, latency, bpfmem, memory, rss")
	flag.StringVar(&cfg.agent, "agent", "bin/tcpfsm", "tcpfsm binary")
	flag.StringVar(&cfg.churn, "churn", "bin/churn", "churn load generator binary")
	flag.StringVar(&cfg.script, "bpftrace", "bench/tcpstates.bt", "the bpftrace tcpstates equivalent")
	flag.StringVar(&cfg.out, "out", "bench/out", "directory for results.json and logs")
	flag.StringVar(&cfg.agentAddr, "agent-addr", "127.0.0.1:19465", "the agent's web address (loopback)")
	flag.IntVar(&cfg.clientCPU, "client-cpu", 0, "CPU of the churn client")
	flag.IntVar(&cfg.serverCPU, "server-cpu", 1, "CPU of the churn server")
	flag.IntVar(&cfg.rounds, "rounds", 5, "interleaved rounds for kernel and e2e")
	flag.Uint64Var(&cfg.kernelConns, "kernel-conns", 20000, "connections per kernel-cost round")
	flag.DurationVar(&cfg.e2eTime, "e2e-time", 5*time.Second, "churn time per e2e round and variant")
	flag.DurationVar(&cfg.lossTime, "loss-time", 60*time.Second, "churn time of the loss run")
	flag.DurationVar(&cfg.rssTime, "rss-time", 10*time.Minute, "churn time of the rss phase")
	flag.DurationVar(&cfg.latencyTime, "latency-time", 10*time.Second, "time of each latency run")
	flag.Float64Var(&cfg.latencyRate, "latency-rate", 100, "connections/s of the light-traffic latency run")
	flag.StringVar(&cfg.kernelVariants, "kernel-variants", "", "comma-separated variants of the kernel phase (agent, agent-tracepoint, bpftrace, agent=PATH); default the first three")
	flag.StringVar(&cfg.e2eVariants, "e2e-variants", "", "comma-separated tracers of the e2e phase besides none (agent, trace, life, bpftrace, agent-sampled, agent-cpu1, agent=PATH, trace=PATH, life=PATH); default agent, trace, life, bpftrace")
	flag.StringVar(&cfg.workloads, "workloads", "rst,fin", "churn close modes the kernel, e2e and loss phases run on: rst, fin or both")
	flag.StringVar(&cfg.baseline, "baseline", "", "another tcpfsm build (e.g. main's): the kernel and e2e phases run it too, as base-agent, base-trace, base-life")
	flag.StringVar(&cfg.baselineVariants, "baseline-variants", "agent,trace,life", "which variants also run with -baseline's build")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "churn before each measured e2e round, not counted")
	flag.StringVar(&cfg.hold, "hold", "bin/hold", "the connection holder of the memory phase")
	flag.IntVar(&cfg.memPairs, "mem-pairs", 50000, "memory phase: loopback connections held open (two tracked sockets each)")
	flag.StringVar(&cfg.memClose, "mem-close", "rst", "memory phase: how the held connections close (rst, fin)")
	flag.DurationVar(&cfg.memSettle, "mem-settle", 20*time.Second, "memory phase: settle time before the idle, open and after-close readings")
	flag.Parse()

	if os.Geteuid() != 0 {
		fatal(fmt.Errorf("needs root (BPF, bpf stats)"))
	}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		fatal(err)
	}
	if cfg.rounds < 1 || cfg.rounds > 50 {
		fatal(fmt.Errorf("-rounds %d: want 1 to 50", cfg.rounds))
	}
	wls, err := workloads(&cfg)
	if err != nil {
		fatal(err)
	}
	cfg.close = wls[0]
	// Each of these runs once per workload, its results under "PHASE/WORKLOAD".
	perWorkload := func(f func(*config) error) error {
		for _, w := range wls {
			c := cfg
			c.close = w
			if err := f(&c); err != nil {
				return fmt.Errorf("%s churn: %w", w, err)
			}
		}
		return nil
	}
	for _, ph := range strings.Split(*phases, ",") {
		start := time.Now()
		var err error
		switch strings.TrimSpace(ph) {
		case "machine":
			err = machine()
		case "kernel":
			err = perWorkload(kernelCost)
		case "e2e":
			err = perWorkload(endToEnd)
		case "loss":
			err = perWorkload(loss)
		case "latency":
			err = latency(&cfg)
		case "bpfmem":
			err = bpfMemory(&cfg)
		case "memory":
			err = memoryPhase(&cfg)
		case "rss":
			err = rssFlat(&cfg, cfg.rssTime)
		case "":
			continue
		default:
			err = fmt.Errorf("unknown phase %q", ph)
		}
		if err != nil {
			fatal(fmt.Errorf("%s: %w", ph, err))
		}
		fmt.Printf("(%s took %s)\n\n", ph, time.Since(start).Round(time.Second))
	}
	b, _ := json.MarshalIndent(results, "", "  ")
	path := filepath.Join(cfg.out, "results.json")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		fatal(err)
	}
	fmt.Println("raw results:", path)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "runner:", err)
	os.Exit(1)
}

func machine() error {
	host, _ := os.Hostname()
	rel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	m := map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "host": host,
		"kernel": strings.TrimSpace(string(rel)), "cpus": runtime.NumCPU(), "cpu_model": model,
		"loadavg": strings.TrimSpace(string(load)), "go": runtime.Version()}
	results["machine"] = m
	fmt.Printf("== machine\n%s, kernel %s, %d CPUs (%s), %s, load %s\n", m["date"], m["kernel"], m["cpus"], model,
		runtime.Version(), m["loadavg"])
	return nil
}

// summary is a median with its spread.
type summary struct {
	N                int
	Median, Min, Max float64
	Q1, Q3           float64
	Values           []float64
}

func summarize(v []float64) summary {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return summary{}
	}
	q := func(p float64) float64 {
		x := p * float64(n-1)
		i := int(x)
		if i+1 >= n {
			return s[n-1]
		}
		return s[i] + (x-float64(i))*(s[i+1]-s[i])
	}
	return summary{N: n, Median: q(0.5), Min: s[0], Max: s[n-1], Q1: q(0.25), Q3: q(0.75), Values: v}
}

func (s summary) String() string {
	return fmt.Sprintf("median %s (min %s, max %s, IQR %s-%s, n=%d)", num(s.Median), num(s.Min), num(s.Max),
		num(s.Q1), num(s.Q3), s.N)
}

func num(f float64) string {
	switch {
	case f >= 1000:
		return fmt.Sprintf("%.0f", f)
	case f >= 10:
		return fmt.Sprintf("%.1f", f)
	default:
		return fmt.Sprintf("%.3f", f)
	}
}

// rotate gives round r's order of the variants, so no variant always runs
// first or last.
func rotate[T any](v []T, r int) []T {
	out := make([]T, len(v))
	for i := range v {
		out[i] = v[(i+r)%len(v)]
	}
	if r%2 == 1 {
		slices.Reverse(out)
	}
	return out
}
