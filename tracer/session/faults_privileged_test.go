package session_test

// Faults: what the tracer does when the kernel drops events, when its
// tables fill up. It must keep running, count what it lost, and flag what
// the loss touched rather than tell it wrong.

import (
	"net"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

// burst makes n connections in ns, each closed with a RST by the client
// (SO_LINGER 0) after the server accepted it: 2 + 3 state events and one
// reset each way per connection, all settled when burst returns.
func burst(t *testing.T, ns *nettest.NS, ln *net.TCPListener, n int) {
	t.Helper()
	if _, err := ns.Churn(ln, n, nil, nil); err != nil {
		t.Fatal(err)
	}
}

// openPairs opens n connections to ln and returns both ends of each.
func openPairs(t *testing.T, ns *nettest.NS, ln *net.TCPListener, n int) []*net.TCPConn {
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

// Per connection: client CLOSE->SYN_SENT, SYN_SENT->ESTABLISHED,
// ESTABLISHED->CLOSE, reset_sent; server LISTEN->SYN_RECV,
// SYN_RECV->ESTABLISHED, reset_received, ESTABLISHED->CLOSE.
const eventsPerConn = 8

// A ring buffer of one page and a reader that is not reading: the kernel
// drops what does not fit. The count reported must equal exactly what
// the traffic made and the tracer did not get, the tracer keeps running,
// and every record the loss touched is flagged.
func TestRingBufferOverflow(t *testing.T) {
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	col := &collector{}
	var received uint64
	s, err := session.Open(session.Options{
		Probe:      probe.Options{Filter: probe.Filter{NetNS: ns.Inode}, RingBufferSize: 4096},
		Handler:    col,
		OnEvent:    func(*probe.Event) { received++ },
		NetNSPaths: map[uint32]string{ns.Inode: ns.Path()},
		NoSnapshot: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 100
	// Nothing reads yet: 100 connections make 800 events, 4096 bytes hold 28.
	burst(t, ns, ln, n)
	done := make(chan error, 1)
	go func() { done <- s.Run() }()
	// And the tracer goes on: a second, slow burst all gets through.
	time.Sleep(200 * time.Millisecond)
	lostBefore, _ := s.Probe().Lost()
	for i := 0; i < 5; i++ {
		burst(t, ns, ln, 1)
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	lost, _ := s.Probe().Lost()
	want := uint64(eventsPerConn * (n + 5))
	if received+lost.Total() != want {
		t.Errorf("received %d + lost %d (ring %d, busy %d) = %d, want the %d events made",
			received, lost.Total(), lost.RingFull, lost.Recursion, received+lost.Total(), want)
	}
	if lost.RingFull < want/2 || lost != lostBefore {
		t.Errorf("lost %+v during the burst, %+v after; want most of the burst lost, nothing after", lostBefore, lost)
	}
	_, finished := col.get()
	var flagged, clean int
	for i := range finished {
		r := &finished[i]
		if r.Role == lifecycle.RoleListener {
			continue
		}
		if r.Anomalies&lifecycle.AnomalyEventsLost != 0 {
			flagged++
			continue
		}
		// Unflagged records come from after the loss: whole and right.
		clean++
		if r.Anomalies != 0 || r.HandshakeNs == 0 || (r.Kind != lifecycle.KindResetSent && r.Kind != lifecycle.KindResetReceived) {
			t.Errorf("unflagged record is wrong: %+v", r)
		}
	}
	// The slow burst's 10 ends at least are whole; a burst connection whose
	// events all got through may be whole too (each one checked above).
	if clean < 10 || flagged == 0 {
		t.Errorf("%d clean records (want at least the 10 ends of the slow burst), %d flagged", clean, flagged)
	}
}

// The tracker's cap: the least recently active records go, each counted,
// and memory stays bounded.
func TestTrackedCap(t *testing.T) {
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	l := startSession(t, ns, session.Options{Lifecycle: lifecycle.Config{MaxTracked: 10}})
	open := openPairs(t, ns, ln, 30)
	deadline := time.Now().Add(10 * time.Second)
	var st lifecycle.Stats
	var tracked int
	for time.Now().Before(deadline) {
		l.s.With(func(b *lifecycle.Builder) { st, tracked = b.Stats(), b.Tracked() })
		if st.Records >= 60 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// 30 clients, 30 accepted: 60 records, and the listener, which
	// predates the session, seeded from the snapshot: 61, at most 10
	// held; the seeded listener, least recently active, went first.
	if st.Records != 60 || st.Seeded != 1 || tracked != 10 || st.Evictions[lifecycle.EvictCap] != 51 {
		t.Errorf("records %d, seeded %d, tracked %d, evicted %d; want 60, 1, 10, 51", st.Records, st.Seeded, tracked, st.Evictions[lifecycle.EvictCap])
	}
	_, finished := l.col.get()
	evicted := 0
	for _, r := range finished {
		if r.Kind == lifecycle.KindEvicted {
			evicted++
		}
	}
	if evicted != 51 {
		t.Errorf("%d evicted records handed out, want 51", evicted)
	}
	for _, c := range open {
		c.Close()
	}
}

// The kernel's per-socket table is an LRU too: a connection whose entry
// it evicted comes back with a new id, flagged partial by the kernel
// side; the builder joins it to its record by its endpoints, so it is
// neither a new connection nor a partial record.
func TestKernelTableCap(t *testing.T) {
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	l := startSession(t, ns, session.Options{Probe: probe.Options{MaxConnections: 8}})
	conns := openPairs(t, ns, ln, 40)
	for _, c := range conns {
		if err := c.SetLinger(0); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	closed := l.waitClosed(t, 80)
	partial := 0
	for i := range closed {
		r := &closed[i]
		if r.Anomalies&lifecycle.AnomalyPartial != 0 {
			partial++
		}
	}
	var st lifecycle.Stats
	l.s.With(func(b *lifecycle.Builder) { st = b.Stats() })
	// 81 sockets through an 8-entry table: most were evicted before they
	// closed; each such close joined its record again.
	if partial != 0 || st.Rejoined < 40 || len(closed) != 80 {
		t.Errorf("%d of %d records flagged partial, %d rejoined; want 0 of 80, at least 40", partial, len(closed), st.Rejoined)
	}
}
