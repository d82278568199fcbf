package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// kernelCost: with BPF stats on, a fixed churn under each tracer; run time
// over run count of each program, from the kernel's own accounting.
func kernelCost(cfg *config) error {
	st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("enable BPF stats: %w", err)
	}
	defer st.Close()
	fmt.Printf("== 1. kernel cost, %s churn: %d rounds, %d connections each, BPF stats on\n", cfg.close, cfg.rounds, cfg.kernelConns)
	type key struct{ variant, prog string }
	perRun := map[key][]float64{}
	perTransition := map[string][]float64{}
	perConn := map[string][]float64{}
	runsPerConn := map[key][]float64{}
	variants := []string{"agent", "bpftrace"}
	if cfg.kernelVariants != "" {
		variants = strings.Split(cfg.kernelVariants, ",")
	}
	variants = withBaseline(cfg, variants)
	for r := 0; r < cfg.rounds; r++ {
		for _, v := range rotate(variants, r) {
			t, err := startVariant(cfg, v)
			if err != nil {
				return fmt.Errorf("%s: %w", v, err)
			}
			before := progStats(t.pid())
			res, err := churn(cfg, cfg.kernelConns, 60*time.Second, 0)
			time.Sleep(300 * time.Millisecond)
			after := progStats(t.pid())
			t.stop()
			if err != nil {
				return err
			}
			var totalNs, stateRuns float64
			var line []string
			for id, a := range after {
				b := before[id]
				dn, dc := float64(a.RunNs-b.RunNs), float64(a.RunCnt-b.RunCnt)
				if dc == 0 {
					continue
				}
				k := key{v, a.Name}
				perRun[k] = append(perRun[k], dn/dc)
				runsPerConn[k] = append(runsPerConn[k], dc/float64(res.Connections))
				totalNs += dn
				// One run of the main state program per transition; its
				// nested instance runs as often but is not a transition.
				if strings.Contains(a.Name, "inet_sock") && !strings.Contains(a.Name, "nested") {
					stateRuns += dc
				}
				line = append(line, fmt.Sprintf("%s %.0f ns x %.0f", a.Name, dn/dc, dc))
			}
			slices.Sort(line)
			if stateRuns > 0 {
				perTransition[v] = append(perTransition[v], totalNs/stateRuns)
			}
			perConn[v] = append(perConn[v], totalNs/float64(res.Connections))
			fmt.Printf("round %d %-16s %6.0f conn/s  %s\n", r+1, v, res.PerSecond, strings.Join(line, ", "))
		}
	}
	out := map[string]any{}
	fmt.Println("ns per program run:")
	keys := make([]key, 0, len(perRun))
	for k := range perRun {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key) int { return strings.Compare(a.variant+a.prog, b.variant+b.prog) })
	for _, k := range keys {
		s := summarize(perRun[k])
		rc := summarize(runsPerConn[k])
		fmt.Printf("  %-16s %-16s %s; %.2f runs per connection\n", k.variant, k.prog, s, rc.Median)
		out[k.variant+"/"+k.prog] = map[string]any{"ns_per_run": s, "runs_per_conn": rc.Median}
	}
	fmt.Println("ns per state transition, all of the tracer's programs (resets included):")
	for _, v := range variants {
		s := summarize(perTransition[v])
		fmt.Printf("  %-16s %s\n", v, s)
		out[v+"/per_transition"] = s
	}
	fmt.Println("ns per connection (both ends), all of the tracer's programs (target for tcpfsm <= 2000):")
	for _, v := range variants {
		s := summarize(perConn[v])
		fmt.Printf("  %-16s %s\n", v, s)
		out[v+"/per_connection"] = s
	}
	results["kernel/"+cfg.close] = out
	return nil
}

// endToEnd: connections/s with no tracer, the agent and bpftrace, in
// rotated order each round; the tracers' own CPU from /proc.
func endToEnd(cfg *config) error {
	if b, _ := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled"); strings.TrimSpace(string(b)) != "0" {
		fmt.Println("warning: kernel.bpf_stats_enabled is on: programs pay for their accounting")
	}
	fmt.Printf("== 3. end to end, %s churn: %d rounds of %s (after %s of warm-up) per variant\n", cfg.close, cfg.rounds, cfg.e2eTime, cfg.warmup)
	variants := []string{"none", "agent", "trace", "life", "bpftrace"}
	if cfg.e2eVariants != "" {
		variants = append([]string{"none"}, strings.Split(cfg.e2eVariants, ",")...)
	}
	variants = withBaseline(cfg, variants)
	rate := map[string][]float64{}
	ratio := map[string][]float64{}
	cpuPer10k := map[string][]float64{}
	cpuFrac := map[string][]float64{}
	for r := 0; r < cfg.rounds; r++ {
		got := map[string]float64{}
		for _, v := range rotate(variants, r) {
			t, err := startVariant(cfg, v)
			if err != nil {
				return fmt.Errorf("%s: %w", v, err)
			}
			if cfg.warmup > 0 {
				if _, err := churn(cfg, 100_000_000, cfg.warmup, 0); err != nil {
					t.stop()
					return err
				}
			}
			c0 := cpuSeconds(t.pid())
			b0, t0 := cpuTimes()
			res, err := churn(cfg, 100_000_000, cfg.e2eTime, 0)
			b1, t1 := cpuTimes()
			c1 := cpuSeconds(t.pid())
			t.stop()
			if err != nil {
				return err
			}
			got[v] = res.PerSecond
			rate[v] = append(rate[v], res.PerSecond)
			extra := ""
			if t != nil {
				f := (c1 - c0) / res.Seconds
				cpuFrac[v] = append(cpuFrac[v], f)
				cpuPer10k[v] = append(cpuPer10k[v], f/(res.PerSecond/10000))
				extra = fmt.Sprintf("  tracer CPU %.1f%% of a core;", 100*f)
			}
			extra += " busy: " + busyString(b0, t0, b1, t1)
			fmt.Printf("round %d %-13s %7.0f conn/s%s\n", r+1, v, res.PerSecond, extra)
		}
		for _, v := range variants[1:] {
			ratio[v] = append(ratio[v], got[v]/got["none"])
		}
	}
	out := map[string]any{}
	for _, v := range variants {
		s := summarize(rate[v])
		fmt.Printf("%-13s conn/s: %s\n", v, s)
		o := map[string]any{"conn_per_s": s}
		if v != "none" {
			rs := summarize(ratio[v])
			cs := summarize(cpuPer10k[v])
			fmt.Printf("%-13s kept of untraced (per round): %s\n", v, rs)
			fmt.Printf("%-13s CPU per 10k conn/s, fraction of a core: %s\n", v, cs)
			o["ratio"] = rs
			o["cpu_per_10k"] = cs
			o["cpu_fraction"] = summarize(cpuFrac[v])
		}
		out[v] = o
	}
	for _, tg := range []struct {
		v      string
		target float64
	}{{"agent", 0.93}, {"trace", 0.85}, {"life", 0.90}} {
		if len(ratio[tg.v]) > 0 {
			fmt.Printf("target: %s keeps >= %.2f: median %.3f", tg.v, tg.target, summarize(ratio[tg.v]).Median)
			if b := ratio["base-"+tg.v]; len(b) > 0 {
				fmt.Printf(" (baseline build: %.3f)", summarize(b).Median)
			}
			fmt.Println()
		}
	}
	if len(cpuPer10k["agent"]) > 0 {
		fmt.Printf("target: agent CPU <= 0.040 of a core per 10k conn/s: median %.3f", summarize(cpuPer10k["agent"]).Median)
		if b := cpuPer10k["base-agent"]; len(b) > 0 {
			fmt.Printf(" (baseline build: %.3f)", summarize(b).Median)
		}
		fmt.Println()
	}
	results["e2e/"+cfg.close] = out
	return nil
}

// loss: the agent at full churn for a while: events lost, wakeups, CPU.
func loss(cfg *config) error {
	fmt.Printf("== 4. loss and wakeups: the agent at full %s churn for %s\n", cfg.close, cfg.lossTime)
	t, err := startAgent(cfg)
	if err != nil {
		return err
	}
	defer t.stop()
	wc, err := startWakeCounter(cfg, t.pid(), "agent")
	if err != nil {
		return err
	}
	m0, err := scrape(cfg)
	if err != nil {
		return err
	}
	c0 := cpuSeconds(t.pid())
	rs := sampleRSS(t.pid(), 5*time.Second)
	res, err := churn(cfg, 1_000_000_000, cfg.lossTime, 0)
	samples := rs.stop()
	c1 := cpuSeconds(t.pid())
	time.Sleep(300 * time.Millisecond) // a flush interval and more
	m1, serr := scrape(cfg)
	woken, deadline, werr := wc.stop()
	if err != nil {
		return err
	}
	if serr != nil {
		return serr
	}
	if werr != nil {
		return werr
	}
	d := func(name string) float64 { return m1[name] - m0[name] }
	events := d("tcpfsm_events_total")
	ringFull := d(`tcpfsm_events_lost_total{reason="ring_buffer_full"}`)
	busy := d(`tcpfsm_events_lost_total{reason="program_busy"}`)
	mismatch := d(`tcpfsm_anomalies_total{kind="state_mismatch"}`)
	lostAnom := d(`tcpfsm_anomalies_total{kind="events_lost"}`)
	closed := sumPrefix(m1, "tcpfsm_connections_closed_total") - sumPrefix(m0, "tcpfsm_connections_closed_total")
	opened := sumPrefix(m1, "tcpfsm_connections_opened_total") - sumPrefix(m0, "tcpfsm_connections_opened_total")
	fmt.Printf("%d connections in %.1fs: %.0f conn/s\n", res.Connections, res.Seconds, res.PerSecond)
	fmt.Printf("events read %.0f (%.2f per connection; a connection of RST churn makes 6 transitions and 2 resets, of FIN churn 10 transitions)\n",
		events, events/float64(res.Connections))
	fmt.Printf("connections opened %.0f, closed %.0f (2 per churn connection: %d)\n", opened, closed, 2*res.Connections)
	fmt.Printf("lost: ring buffer full %.0f, program busy %.0f; records with state_mismatch %.0f, events_lost %.0f\n",
		ringFull, busy, mismatch, lostAnom)
	returns := woken + deadline
	fmt.Printf("reader epoll returns: %d woken by the kernel, %d at the poll deadline; %.0f events per return, %.0f per kernel wakeup\n",
		woken, deadline, events/float64(max(returns, 1)), events/float64(max(woken, 1)))
	cpu := (c1 - c0) / res.Seconds
	fmt.Printf("agent CPU %.1f%% of a core = %.3f of a core per 10k conn/s\n", 100*cpu, cpu/(res.PerSecond/1e4))
	results["loss/"+cfg.close] = map[string]any{"connections": res.Connections, "seconds": res.Seconds, "conn_per_s": res.PerSecond,
		"events": events, "ring_full": ringFull, "program_busy": busy, "state_mismatch": mismatch, "events_lost_records": lostAnom,
		"opened": opened, "closed": closed, "woken": woken, "deadline": deadline, "cpu_fraction": cpu,
		"rss": describeRSS(samples, 5*time.Second)}
	return nil
}

// latency: the delay from a transition (its ts_ns) to the reader, with the
// probe's defaults, in this process: under light traffic and at full churn.
func latency(cfg *config) error {
	fmt.Printf("== 4b. delivery delay, transition to user space (probe defaults: 50ms flush, wakeup at 1/16 of the ring)\n")
	p, err := probe.Open(probe.Options{})
	if err != nil {
		return err
	}
	defer p.Close()
	var mu sync.Mutex
	var delays []float64
	var from uint64
	var ev probe.Event
	done := make(chan error, 1)
	go func() {
		done <- p.Read(func(raw []byte) error {
			if probe.Decode(raw, &ev) != nil {
				return nil //nolint:nilerr // not an event of ours: skip it, read on
			}
			now := clock.Monotonic()
			mu.Lock()
			if ev.TsNs >= from && from != 0 && len(delays) < 5_000_000 && ev.Flags&probe.FlagDeferred == 0 {
				delays = append(delays, float64(now-ev.TsNs)/1e6)
			}
			mu.Unlock()
			return nil
		}, nil)
	}()
	out := map[string]any{}
	for _, run := range []struct {
		name string
		rate float64
	}{{"light", cfg.latencyRate}, {"full", 0}} {
		wc, err := startWakeCounter(cfg, os.Getpid(), "latency-"+run.name)
		if err != nil {
			return err
		}
		mu.Lock()
		delays, from = delays[:0], clock.Monotonic()
		mu.Unlock()
		res, err := churn(cfg, 1_000_000_000, cfg.latencyTime, run.rate)
		time.Sleep(200 * time.Millisecond)
		woken, deadline, werr := wc.stop()
		if err != nil {
			return err
		}
		if werr != nil {
			return werr
		}
		mu.Lock()
		s := slices.Clone(delays)
		from = 0
		mu.Unlock()
		slices.Sort(s)
		pct := func(p float64) float64 {
			if len(s) == 0 {
				return 0
			}
			return s[min(len(s)-1, int(p*float64(len(s))))]
		}
		fmt.Printf("%-5s %6.0f conn/s: %d events, delay ms p50 %.1f p90 %.1f p99 %.1f max %.1f; reader woken %d times, %d deadlines (%.0f events per wakeup)\n",
			run.name, res.PerSecond, len(s), pct(0.5), pct(0.9), pct(0.99), pct(1), woken, deadline,
			float64(len(s))/float64(max(woken, 1)))
		out[run.name] = map[string]any{"conn_per_s": res.PerSecond, "events": len(s), "p50_ms": pct(0.5), "p90_ms": pct(0.9),
			"p99_ms": pct(0.99), "max_ms": pct(1), "woken": woken, "deadline": deadline}
	}
	_ = p.Stop() // Read returns its error below
	if err := <-done; err != nil {
		return err
	}
	results["latency"] = out
	return nil
}

// bpfMemory: the agent's maps as the kernel accounts them (memlock), at
// its default size and with --max-tracked 65536.
func bpfMemory(cfg *config) error {
	fmt.Println("== 5a. BPF map memory (the kernel's memlock accounting, from /proc/PID/fdinfo)")
	out := map[string]any{}
	conns := map[uint64]uint64{}
	for _, maxTracked := range []int{262144, 65536} {
		t, err := startAgent(cfg, "--max-tracked", strconv.Itoa(maxTracked))
		if err != nil {
			return err
		}
		var total uint64
		fmt.Printf("tcpfsm agent --max-tracked %d:\n", maxTracked)
		var rows []string
		for _, m := range fdinfos(t.pid(), "map_id") {
			id, _ := strconv.ParseUint(m["map_id"], 10, 32)
			name := "?"
			if mp, err := ebpf.NewMapFromID(ebpf.MapID(id)); err == nil {
				if info, err := mp.Info(); err == nil {
					name = info.Name
				}
				mp.Close()
			}
			mem, _ := strconv.ParseUint(m["memlock"], 10, 64)
			total += mem
			entries, _ := strconv.ParseUint(m["max_entries"], 10, 64)
			if name == "conns" {
				conns[entries] = mem
			}
			rows = append(rows, fmt.Sprintf("  %-12s type %-3s entries %-8s key %-3s value %-4s memlock %d B",
				name, m["map_type"], m["max_entries"], m["key_size"], m["value_size"], mem))
		}
		t.stop()
		slices.Sort(rows)
		rows = slices.Compact(rows)
		fmt.Println(strings.Join(rows, "\n"))
		fmt.Printf("  total %d B (%.1f MiB)\n", total, float64(total)/(1<<20))
		out[fmt.Sprintf("max_tracked_%d", maxTracked)] = map[string]any{"total": total, "maps": rows}
	}
	if a, b := conns[262144], conns[65536]; a > b {
		per := float64(a-b) / float64(262144-65536)
		fmt.Printf("conns: %.1f B per entry (memlock difference / entry difference); preallocated: 65536 entries %d B, 262144 entries %d B\n",
			per, b, a)
		out["conns_bytes_per_entry"] = per
		out["conns_65536"] = b
		out["conns_262144"] = a
	}
	results["bpfmem"] = out
	return nil
}

// rssFlat: the agent's resident memory under full churn for d.
func rssFlat(cfg *config, d time.Duration) error {
	fmt.Printf("== 5b. agent RSS under full churn for %s\n", d)
	t, err := startAgent(cfg)
	if err != nil {
		return err
	}
	defer t.stop()
	every := 10 * time.Second
	if d < 2*time.Minute {
		every = 5 * time.Second
	}
	rs := sampleRSS(t.pid(), every)
	res, err := churn(cfg, 10_000_000_000, d, 0)
	samples := rs.stop()
	if err != nil {
		return err
	}
	fmt.Printf("%d connections, %.0f conn/s\n", res.Connections, res.PerSecond)
	results["rss"] = map[string]any{"seconds": res.Seconds, "conn_per_s": res.PerSecond, "rss": describeRSS(samples, every)}
	return nil
}
