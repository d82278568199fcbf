package session_test

import (
	"net"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

// ssNames are ss -tan's state names.
var ssNames = map[string]probe.State{"ESTAB": probe.StateEstablished, "LISTEN": probe.StateListen,
	"CLOSE-WAIT": probe.StateCloseWait, "FIN-WAIT-1": probe.StateFinWait1, "FIN-WAIT-2": probe.StateFinWait2,
	"TIME-WAIT": probe.StateTimeWait, "SYN-SENT": probe.StateSynSent, "SYN-RECV": probe.StateSynRecv,
	"LAST-ACK": probe.StateLastAck, "CLOSING": probe.StateClosing}

// ssCounts is what `ss -tan` lists in the namespace, by state, and the
// total: the user's check.
func ssCounts(t *testing.T, ns *nettest.NS) (map[probe.State]int, int) {
	t.Helper()
	m, n := map[probe.State]int{}, 0
	for name, c := range ns.SSStates(t) {
		st, ok := ssNames[name]
		if !ok {
			t.Fatalf("ss: state %q", name)
		}
		m[st] += c
		n += c
	}
	return m, n
}

// requireSS: outside the kernel VMs (busybox only, no iproute2), these
// tests compare with ss; in them, with sock_diag, ss's own source.
func requireSS(t *testing.T) {
	t.Helper()
	if !nettest.InKernelVM() {
		nettest.RequireTool(t, "ss", "iproute2") // the kernel's own count, compared
	}
}

// kernelView is ss's count, or in the kernel VMs sock_diag's (requireSS).
func kernelView(t *testing.T, ns *nettest.NS) (map[probe.State]int, int) {
	t.Helper()
	if nettest.InKernelVM() {
		return kernelCounts(t, ns)
	}
	return ssCounts(t, ns)
}

// agreeWithSS waits until the builder's gauges and tracked count equal
// ss's (kernelView), ss unchanged around the reading (the same moment), and want's
// counts; it returns the counts.
func agreeWithSS(t *testing.T, l *live, ns *nettest.NS, what string, want map[probe.State]int, within time.Duration) map[probe.State]int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		before, bn := kernelView(t, ns)
		var g map[probe.State]int
		var gn int
		l.s.With(func(b *lifecycle.Builder) { g, gn = builderCounts(b) })
		after, an := kernelView(t, ns)
		ok := sameCounts(before, after) && bn == an && sameCounts(g, before) && gn == bn
		for st, n := range want {
			ok = ok && g[st] == n
		}
		if ok {
			return g
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the builder's %v (tracked %d), ss %v (%d) then %v (%d), want %v", what, g, gn, before, bn, after, an, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// timeWaits makes n connections to ln closed both ways, the client
// first: n client ends in TIME_WAIT. It returns their ports.
func timeWaits(t *testing.T, ns *nettest.NS, ln *net.TCPListener, n int) map[uint16]bool {
	t.Helper()
	ports := map[uint16]bool{}
	for _, c := range openPairs(t, ns, ln, n) {
		if c.LocalAddr().(*net.TCPAddr).Port != ln.Addr().(*net.TCPAddr).Port {
			ports[uint16(c.LocalAddr().(*net.TCPAddr).Port)] = true
		}
		c.Close() // the client first: openPairs lists it first
	}
	return ports
}

// TIME_WAIT sockets older than the session are records from the start,
// seeded and partial, in the gauge as ss counts them; each ends when the
// kernel drops it, at its timer (read by sock_diag, or fentry's exact
// kill), and is handed out then: graceful, its TIME_WAIT a lower bound
// since the session found it. Slow (60 s), so it runs beside the rest.
func TestSeededTimeWaitExpiresLive(t *testing.T) {
	requireSS(t)
	nettest.RequireBPF(t)
	t.Parallel()
	ns := nettest.NewNS(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	const n = 5
	made := time.Now()
	ports := timeWaits(t, ns, ln, n)
	deadline := time.Now().Add(10 * time.Second)
	for k, _ := kernelCounts(t, ns); k[probe.StateTimeWait] != n || k[probe.StateLastAck] != 0 || k[probe.StateFinWait1] != 0; k, _ = kernelCounts(t, ns) {
		if time.Now().After(deadline) {
			t.Fatalf("closes not through: %v", k)
		}
		time.Sleep(20 * time.Millisecond)
	}

	l := startSession(t, ns, session.Options{TimeWaitPoll: time.Second})
	found := time.Now()
	agreeWithSS(t, l, ns, "at start", map[probe.State]int{probe.StateTimeWait: n, probe.StateListen: 1}, 5*time.Second)
	var st lifecycle.Stats
	var open []lifecycle.Record
	l.s.With(func(b *lifecycle.Builder) {
		st = b.Stats()
		for r := range b.Open() {
			open = append(open, *r)
		}
	})
	if st.Seeded != n+1 || len(open) != n+1 {
		t.Fatalf("seeded %d, open %d; want %d", st.Seeded, len(open), n+1)
	}
	for _, r := range open {
		if r.Role == lifecycle.RoleListener {
			continue
		}
		state, since := r.Current()
		if state != probe.StateTimeWait || since != 0 || !r.Seeded || r.Anomalies != lifecycle.AnomalyPartial || r.OwnerKnown() ||
			r.End != 0 || r.TimeWaitEnter != 0 || r.Kind != lifecycle.KindGraceful || r.Role != lifecycle.RoleActive || !ports[r.Lport] {
			t.Errorf("seeded TIME_WAIT %s since %d: %+v", state, since, r)
		}
	}

	// The kernel's timers: 60 s after the closes, up to 2 s late.
	agreeWithSS(t, l, ns, "after the timers", map[probe.State]int{probe.StateTimeWait: 0, probe.StateListen: 1}, 75*time.Second)
	gone := time.Now()
	closed, finished := l.col.get()
	if len(connections(closed)) != 0 {
		t.Errorf("%d closes handed out: theirs were before the session", len(connections(closed)))
	}
	finished = connections(finished)
	if len(finished) != n {
		t.Fatalf("%d records finished, want %d", len(finished), n)
	}
	want := timeWaitEnd(l)
	for _, r := range finished {
		tw := time.Duration(r.TimeWaitAtLeastNs())
		if r.TimeWait != want || !r.Seeded || r.Kind != lifecycle.KindGraceful || r.End != 0 || r.TimeWaitNs() != 0 ||
			tw < 60*time.Second-found.Sub(made)-time.Second || tw > gone.Sub(made) || !ports[r.Lport] || r.NSpan != 1 ||
			r.Spans[0].State != probe.StateTimeWait || r.Spans[0].Enter != 0 || r.Spans[0].Exit != r.TimeWaitExit {
			t.Errorf("finished: %s, TIME_WAIT at least %v (found %v after the closes, gone %v after): %+v", r.TimeWait, tw,
				found.Sub(made), gone.Sub(made), r)
		}
	}
}
