package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
)

// memoryPhase: `tcpfsm agent` at its default settings (every record
// logged to a file) while bench/hold opens cfg.memPairs real loopback
// connections in a network namespace of its own (two tracked sockets
// each), holds them, then closes them all. The agent's VmRSS idle, with
// them open, right after they closed and after a settle time; its BPF
// maps' memlock; bytes per tracked connection all-in.
func memoryPhase(cfg *config) error {
	n := 2 * cfg.memPairs // tracked sockets: both ends of each pair
	fmt.Printf("== 5c. memory with %d real loopback connections held open (%d pairs, both ends tracked), then closed (%s)\n",
		n, cfg.memPairs, cfg.memClose)
	ns := fmt.Sprintf("tcpfsm-bench-mem-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %w: %s", err, out)
	}
	defer func() { _ = exec.Command("ip", "netns", "del", ns).Run() }() // best effort: the namespace dies with its sockets
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up: %w: %s", err, out)
	}
	logFile := filepath.Join(cfg.out, "memory-agent.log")
	t, err := startAgentArgs(cfg, "agent", "--web.listen-address", cfg.agentAddr, "--log.file", logFile)
	if err != nil {
		return err
	}
	defer t.stop()
	gauge := func() (float64, map[string]float64, error) {
		m, err := scrape(cfg)
		if err != nil {
			return 0, nil, err
		}
		return m[`tcpfsm_connections{state="established"}`], m, nil
	}
	time.Sleep(cfg.memSettle / 2)
	idle := rssKiB(t.pid())
	est0, m0, err := gauge()
	if err != nil {
		return err
	}
	bpfTotal, connsMem, connsEntries := bpfMaps(t.pid())
	fmt.Printf("idle: RSS %d KiB, Go heap in use %.0f KiB, %0.f ESTABLISHED tracked; BPF maps memlock %d B (conns %d B for %d entries, %.1f B each)\n",
		idle, m0["go_memstats_heap_inuse_bytes"]/1024, est0, bpfTotal, connsMem, connsEntries, float64(connsMem)/float64(max(connsEntries, 1)))

	hold := exec.Command("ip", "netns", "exec", ns, cfg.hold, "-pairs", strconv.Itoa(cfg.memPairs), "-close", cfg.memClose)
	stdin, err := hold.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := hold.StdoutPipe()
	if err != nil {
		return err
	}
	var herr strings.Builder
	hold.Stderr = &herr
	start := time.Now()
	if err := hold.Start(); err != nil {
		return err
	}
	defer func() { _ = hold.Process.Kill(); _ = hold.Wait() }() // after a clean exit: ESRCH and its status again
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		return fmt.Errorf("hold: no output: %s", herr.String())
	}
	opened := time.Since(start)
	// Wait until the agent has them all, then for its heap to settle.
	want := est0 + float64(n)
	if err := waitGauge(gauge, func(v float64) bool { return v >= want }, 60*time.Second); err != nil {
		return fmt.Errorf("waiting for %0.f ESTABLISHED: %w", want, err)
	}
	time.Sleep(cfg.memSettle / 2)
	open := rssKiB(t.pid())
	est1, m1, err := gauge()
	if err != nil {
		return err
	}
	saveHeapProfile(cfg, "memory-open.heap")
	fmt.Printf("open: %s (hold: %s) opened in %.1fs; RSS %d KiB, Go heap in use %.0f KiB, %0.f ESTABLISHED tracked\n",
		lines.Text(), cfg.memClose, opened.Seconds(), open, m1["go_memstats_heap_inuse_bytes"]/1024, est1)

	if _, err := io.WriteString(stdin, "close\n"); err != nil {
		return err
	}
	if !lines.Scan() {
		return fmt.Errorf("hold: no close: %s", herr.String())
	}
	// Other tests on the machine may hold a few connections: the closes
	// are done when at most 1 % of the held ones are left.
	if err := waitGauge(gauge, func(v float64) bool { return v <= est0+float64(n)/100 }, 60*time.Second); err != nil {
		return fmt.Errorf("waiting for the closes: %w", err)
	}
	closed := rssKiB(t.pid())
	time.Sleep(cfg.memSettle)
	settled := rssKiB(t.pid())
	saveHeapProfile(cfg, "memory-settled.heap")
	_, m2, err := gauge()
	if err != nil {
		return err
	}
	fmt.Printf("closed: RSS %d KiB right after, %d KiB after %s (Go heap in use %.0f KiB, released to the OS %.0f KiB)\n",
		closed, settled, cfg.memSettle, m2["go_memstats_heap_inuse_bytes"]/1024, m2["go_memstats_heap_released_bytes"]/1024)

	grow := float64(open-idle) * 1024 / float64(n)
	perEntry := float64(connsMem) / float64(max(connsEntries, 1))
	fmt.Printf("per tracked connection: RSS growth %.0f B + BPF conns entry %.0f B = %.0f B all-in (target <= 300); "+
		"with all BPF map memory spread over them %.0f B\n",
		grow, perEntry, grow+perEntry, grow+float64(bpfTotal)/float64(n))
	back := 100 * float64(settled-idle) / float64(idle)
	fmt.Printf("after close: RSS %+.1f%% of idle after %s (target within 20%%), %+.1f%% right after\n",
		back, cfg.memSettle, 100*float64(closed-idle)/float64(idle))
	results["memory"] = map[string]any{"pairs": cfg.memPairs, "tracked": n, "close": cfg.memClose,
		"idle_kib": idle, "open_kib": open, "closed_kib": closed, "settled_kib": settled, "settle_s": cfg.memSettle.Seconds(),
		"heap_inuse_idle": m0["go_memstats_heap_inuse_bytes"], "heap_inuse_open": m1["go_memstats_heap_inuse_bytes"],
		"heap_inuse_settled": m2["go_memstats_heap_inuse_bytes"],
		"bpf_memlock_total":  bpfTotal, "bpf_conns_memlock": connsMem, "bpf_conns_entries": connsEntries,
		"rss_growth_per_conn": grow, "bpf_per_entry": perEntry, "all_in_per_conn": grow + perEntry,
		"all_in_with_all_bpf": grow + float64(bpfTotal)/float64(n), "settled_vs_idle_pct": back}
	return nil
}

// startAgentArgs runs the agent with exactly args and waits for /readyz.
func startAgentArgs(cfg *config, args ...string) (*tracer, error) {
	cmd := exec.Command(cfg.agent, args...)
	errLog, err := os.Create(filepath.Join(cfg.out, "agent.stderr"))
	if err != nil {
		return nil, err
	}
	cmd.Stderr = errLog
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &tracer{name: "agent", cmd: cmd}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + cfg.agentAddr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return t, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.stop()
	return nil, errors.New("agent not ready after 30s (see agent.stderr)")
}

func waitGauge(get func() (float64, map[string]float64, error), ok func(float64) bool, d time.Duration) error {
	deadline := time.Now().Add(d)
	var last float64
	var err error
	for time.Now().Before(deadline) {
		var v float64
		if v, _, err = get(); err == nil {
			last = v
			if ok(v) {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("still %0.f after %s", last, d)
}

// bpfMaps is the memlock of every map pid holds, and of its conns map.
func bpfMaps(pid int) (total, conns, connsEntries uint64) {
	seen := map[string]bool{}
	for _, m := range fdinfos(pid, "map_id") {
		if seen[m["map_id"]] {
			continue
		}
		seen[m["map_id"]] = true
		mem, _ := strconv.ParseUint(m["memlock"], 10, 64)
		total += mem
		id, _ := strconv.ParseUint(m["map_id"], 10, 32)
		if mp, err := ebpf.NewMapFromID(ebpf.MapID(id)); err == nil {
			if info, err := mp.Info(); err == nil && info.Name == "conns" {
				conns = mem
				connsEntries, _ = strconv.ParseUint(m["max_entries"], 10, 64)
			}
			mp.Close()
		}
	}
	return total, conns, connsEntries
}

// saveHeapProfile keeps the agent's heap profile when it serves one (a
// build with /debug/pprof/heap; the released agent has none).
func saveHeapProfile(cfg *config, name string) {
	resp, err := http.Get("http://" + cfg.agentAddr + "/debug/pprof/heap")
	if err != nil {
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return
	}
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		_ = os.WriteFile(filepath.Join(cfg.out, name), b, 0o644) // a diagnostic: without it the figures stand
	}
}
