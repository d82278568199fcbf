package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
)

// TestSoak runs the agent under connection churn for TCPFSM_SOAK (a
// duration: make soak runs 10 minutes, CI one) and requires resident
// memory, goroutines and open files flat, and nothing lost.
func TestSoak(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("TCPFSM_SOAK"))
	if err != nil {
		t.Skip("set TCPFSM_SOAK=DURATION (make soak, make soak-ci) to run the soak test")
	}
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	a := startAgent(t, bin, agentOptions{args: []string{"--netns", ns.Path(), "--log.file", "/dev/null"}})
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")

	// Churn: connect, accept, close with a RST (no TIME_WAIT piles up),
	// as fast as one client goroutine goes, until the duration is over.
	stop := make(chan struct{})
	churned := make(chan int, 1)
	go func() {
		n, _ := ns.Churn(ln, 1<<62, stop, nil)
		churned <- n
	}()

	type sample struct {
		at                       time.Duration
		rss, fds, goroutines     int
		lost, tracked, closedAll float64
	}
	var samples []sample
	start := time.Now()
	every := d / 20
	for time.Since(start) < d {
		time.Sleep(every)
		m, _ := a.scrape(t)
		samples = append(samples, sample{
			at: time.Since(start).Round(time.Second), rss: procStatusKB(t, a.cmd.Process.Pid, "VmRSS"),
			fds: countFDs(t, a.cmd.Process.Pid), goroutines: int(metricSum(m, "go_goroutines")),
			lost: metricSum(m, "tcpfsm_events_lost_total"), tracked: metricSum(m, "tcpfsm_tracked_connections"),
			closedAll: metricSum(m, "tcpfsm_connections_closed_total"),
		})
	}
	close(stop)
	n := <-churned
	if code := a.stop(t); code != 0 {
		t.Fatalf("agent exit %d", code)
	}

	var report strings.Builder
	fmt.Fprintf(&report, "soak %s: %d connections (%.0f/s)\n%8s %10s %5s %10s %8s %8s %12s\n", d, n, float64(n)/d.Seconds(),
		"t", "rss_kb", "fds", "goroutines", "lost", "tracked", "closed")
	for _, s := range samples {
		fmt.Fprintf(&report, "%8s %10d %5d %10d %8.0f %8.0f %12.0f\n", s.at, s.rss, s.fds, s.goroutines, s.lost, s.tracked, s.closedAll)
	}
	t.Log("\n" + report.String())

	// After a quarter of the run to warm up: flat.
	warm := samples[len(samples)/4:]
	base := warm[0]
	for _, s := range warm {
		if s.rss > base.rss+base.rss/10+8192 {
			t.Errorf("resident memory grew from %d kB to %d kB at %s", base.rss, s.rss, s.at)
		}
		if s.fds > base.fds+2 || s.goroutines > base.goroutines+5 {
			t.Errorf("at %s: %d fds, %d goroutines; at %s %d and %d", s.at, s.fds, s.goroutines, base.at, base.fds, base.goroutines)
		}
	}
	last := samples[len(samples)-1]
	if last.lost != 0 {
		t.Errorf("%.0f events lost", last.lost)
	}
	if last.closedAll < float64(n)*0.9 {
		t.Errorf("the agent counted %.0f closes of %d connections (both ends each)", last.closedAll, n)
	}
}

func procStatusKB(t *testing.T, pid int, key string) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, key+":") {
			f := strings.Fields(line)
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
