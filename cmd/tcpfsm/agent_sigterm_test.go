package main

// SIGTERM during traffic: the agent flushes every record before it exits.

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
)

// ---- SIGTERM during traffic ----

// A burst of connections, each closed by both ends, then SIGTERM at once:
// the agent exits 0 and every connection that finished before the signal
// has both its records in the log (the client's still in TIME_WAIT).
func TestAgentSIGTERMFlushesEveryRecord(t *testing.T) {
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	a := startAgent(t, bin, agentOptions{args: append([]string{"--netns", ns.Path()}, small...)}) // records on stdout
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	done := nettest.Serve(t, ln, 64)
	srvPort := ln.Addr().(*net.TCPAddr).Port
	const n = 200
	ports := make([]int, 0, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		ports = append(ports, ns.Graceful(t, ln.Addr().String(), 32))
	}
	for i := 0; i < n; i++ {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("server handled %d of %d connections", i, n)
		}
	}
	burst := time.Since(start)
	if code := a.stop(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM\nstderr:\n%s", code, a.stderr)
	}
	t.Logf("%d connections in %v, then SIGTERM", n, burst.Round(time.Millisecond))
	recs := records(t, []byte(a.stdout.String()))
	seen := map[[2]int]int{}
	for _, r := range recs {
		seen[[2]int{r.Lport, r.Rport}]++
	}
	missing := 0
	for _, p := range ports {
		for _, k := range [][2]int{{p, srvPort}, {srvPort, p}} {
			if seen[k] != 1 {
				missing++
				if missing <= 10 {
					t.Errorf("connection %d<->%d: %d records of the end with local port %d, want 1", p, srvPort, seen[k], k[0])
				}
			}
		}
	}
	if missing > 0 || len(recs) != 2*n {
		t.Fatalf("%d records for %d connections (both ends), %d missing\nstderr:\n%s", len(recs), n, missing, a.stderr)
	}
	if !strings.Contains(a.stderr.String(), `"msg":"stopped","records_logged":400`) {
		t.Errorf("stop summary:\n%s", a.stderr)
	}
}
