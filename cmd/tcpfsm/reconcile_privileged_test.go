package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
)

// pairsTo opens n connections to ln and returns both ends of each.
func pairsTo(t *testing.T, ns *nettest.NS, ln *net.TCPListener, n int) []*net.TCPConn {
	t.Helper()
	var ends []*net.TCPConn
	for i := 0; i < n; i++ {
		c, err := ns.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		ends = append(ends, c, s)
	}
	return ends
}

// The agent loses events for real (its reader stopped, a one-page ring
// buffer) while connections it tracks reset and others open; the
// reconciliation the loss brings forward repairs it: every gauge equals
// sock_diag and ss, and tcpfsm_reconciled_total counts the repairs.
func TestAgentReconcilesAfterLostEvents(t *testing.T) {
	nettest.RequireTool(t, "ss", "iproute2") // the kernel's own count, compared
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	a := startAgent(t, bin, agentOptions{args: []string{"--netns", ns.Path(), "--log.file", filepath.Join(t.TempDir(), "log"),
		"--max-tracked", "4096", "--ring-buffer-bytes", "4096", "--reconcile.interval", "1h"}})
	a.waitReady(t)
	const closing, opening = 20, 30
	old := pairsTo(t, ns, ln, closing)
	a.waitMetric(t, "the first pairs established", func(m map[string]*dto.MetricFamily) bool {
		return metricSum(m, "tcpfsm_connections", "state", "established") == 2*closing
	})

	// Stop the agent: its reader reads nothing while the kernel's ring
	// (a page: 28 events) overflows.
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// kill() returns before the threads stop: closing before then lets
	// the reader take the closes, and nothing would be left to end.
	waitStopped(t, a.cmd.Process.Pid)
	for _, c := range old {
		if err := c.SetLinger(0); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	held := pairsTo(t, ns, ln, opening)
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// The wait is for the scene's counts too: a loss while the first pairs
	// opened (a page of ring is 28 events) brings a reconciliation whose
	// dump may precede the stop; the one after this loss then repairs.
	mfs := a.waitMetric(t, "events lost and a reconciliation", func(m map[string]*dto.MetricFamily) bool {
		return metricSum(m, "tcpfsm_events_lost_total") > 0 && metricSum(m, "tcpfsm_reconciliations_total") >= 1 &&
			metricSum(m, "tcpfsm_connections", "state", "established") == 2*opening &&
			metricSum(m, "tcpfsm_tracked_connections") == 2*opening+1
	})
	k := compareWithKernel(t, a, ns)
	if k["established"] != 2*opening || k["listen"] != 1 {
		t.Errorf("the scene: %v", k)
	}
	seeded := metricSum(mfs, "tcpfsm_reconciled_total", "action", "seeded")
	ended := metricSum(mfs, "tcpfsm_reconciled_total", "action", "ended")
	closedUnseen := metricSum(mfs, "tcpfsm_connections_closed_total", "kind", "unobserved")
	t.Logf("lost %v events; repairs seeded %v, ended %v; closed unobserved %v", metricSum(mfs, "tcpfsm_events_lost_total"),
		seeded, ended, closedUnseen)
	if seeded == 0 || ended == 0 || closedUnseen != ended {
		t.Errorf("repairs seeded %v, ended %v; closes of kind unobserved %v", seeded, ended, closedUnseen)
	}
}

// waitStopped waits until every thread of the process is stopped (state
// T in /proc/PID/task/*/stat).
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) == 0 {
			t.Fatalf("threads of %d: %v", pid, err)
		}
		stopped := 0
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue // a thread that ended
			}
			// pid (comm) state ...: comm may hold spaces, the state
			// follows the last ')'.
			if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && (b[i+2] == 'T' || b[i+2] == 't') {
				stopped++
			}
		}
		if stopped == len(tasks) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d threads of %d stopped after SIGSTOP", stopped, len(tasks), pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
