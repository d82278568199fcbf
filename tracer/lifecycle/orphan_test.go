package lifecycle

import (
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// A client closes (FIN_WAIT1 at 100 ms, our FIN acknowledged at 101 ms)
// while its server holds the connection in CLOSE_WAIT: the client's
// socket is an orphan handed to a time-wait socket in FIN_WAIT2. These
// are the ways its FIN_WAIT2 ends, each as the inputs tell it.

// orphanClient: connection 1's client end, orphaned at 101 ms.
func orphanClient(opts ...evOpt) []probe.Event {
	return []probe.Event{
		st(1, 10, CLOSE, SS, opts...), st(1, 11, SS, EST, append(opts, withFlags(probe.FlagSynAcked))...),
		st(1, 100, EST, FW1, opts...), st(1, 101, FW1, FW2, append(opts, withFlags(probe.FlagFinAcked))...),
		st(1, 101, FW2, CLOSE, append(opts, withFlags(probe.FlagFinAcked))...),
	}
}

// holdingServer: its server end, in CLOSE_WAIT from 100 ms.
func holdingServer(opts ...evOpt) []probe.Event {
	return []probe.Event{
		st(2, 10, LST, SR, opts...), st(2, 11, SR, EST, opts...), st(2, 100, EST, CW, append(opts, withFlags(probe.FlagFinReceived))...),
	}
}

// serverCloses: the server's FIN at atMs, acknowledged 1 ms later.
func serverCloses(atMs uint64, opts ...evOpt) []probe.Event {
	return []probe.Event{
		st(2, atMs, CW, LA, append(opts, withFlags(probe.FlagFinReceived))...),
		st(2, atMs+1, LA, CLOSE, append(opts, withFlags(probe.FlagFinReceived|probe.FlagFinAcked))...),
	}
}

// twSock is the client's time-wait socket in a dump at atMs, in substate.
func twSock(atMs uint64, substate probe.State, expiresMs uint32) *Socket {
	e := st(1, 0, CLOSE, CLOSE)
	s := twSocket(e, atMs, expiresMs)
	s.State = substate
	return s
}

// otherNetNS puts an end in namespace 8 at 10.0.0.x: the client at
// 10.0.0.1, the server at 10.0.0.2.
func otherNetNS(client bool) evOpt {
	return func(e *probe.Event) {
		local, remote := byte(2), byte(1)
		e.Netns = 9
		if client {
			local, remote = 1, 2
			e.Netns = 8
		}
		copy(e.Saddr[:], []byte{10, 0, 0, local})
		copy(e.Daddr[:], []byte{10, 0, 0, remote})
	}
}

type step func(b *Builder)

func events(evs ...probe.Event) step { return func(b *Builder) { feed(b, evs...) } }
func tick(atMs uint64) step          { return func(b *Builder) { b.Tick(atMs * ms) } }
func dump(atMs uint64, socks ...*Socket) step {
	return func(b *Builder) {
		for _, s := range socks {
			b.Observe(s)
		}
		b.DumpDone(7, PurposeTimeWait, atMs*ms)
	}
}

func TestOrphanFinWait2(t *testing.T) {
	// While in FIN_WAIT2, with its server in CLOSE_WAIT.
	holding := []step{events(orphanClient()...), events(holdingServer()...), tick(200)}
	cases := []struct {
		name  string
		exact bool
		steps []step
		// The client's record: its close, its states, when FIN_WAIT2
		// ended (ms; the close, or TIME_WAIT's start), and TIME_WAIT's end.
		kind      Kind
		initiator Initiator
		states    []probe.State
		fw2End    uint64
		tw        TimeWaitEnd
		twExit    uint64 // ms, 0 while pending
	}{
		{"the traced peer's FIN, acknowledged", false,
			append(holding, events(serverCloses(5000)...), tick(5100)),
			KindGraceful, InitiatorLocal, []probe.State{SS, EST, FW1, FW2, TW}, 5000, TWPending, 0},
		{"the traced peer's FIN, in another namespace", false,
			[]step{events(orphanClient(otherNetNS(true))...), events(holdingServer(otherNetNS(false))...),
				events(serverCloses(5000, otherNetNS(false))...), tick(5100)},
			KindGraceful, InitiatorLocal, []probe.State{SS, EST, FW1, FW2, TW}, 5000, TWPending, 0},
		{"the peer's FIN in sock_diag's substate and timer", false,
			// Listed in FIN_WAIT2 with 58.9 s to live, then in TIME_WAIT
			// with 59.25 s left at 6 s: the FIN came at 5.25 s.
			append(holding, dump(1000, twSock(1000, FW2, 59100)), dump(6000, twSock(6000, TW, 59250)),
				dump(7000, twSock(7000, TW, 58250)), tick(7100), dump(66000)),
			KindGraceful, InitiatorLocal, []probe.State{SS, EST, FW1, FW2, TW}, 5250, TWSockDiag, 65250},
		{"no FIN: its timer in sock_diag ran out", false,
			append(holding, dump(1000, twSock(1000, FW2, 59100)), dump(61000, twSock(61000, FW2, 0)), dump(62000)),
			KindFinWait2Timeout, InitiatorLocal, []probe.State{SS, EST, FW1, FW2}, 61000, TWNone, 0},
		{"no FIN: gone before its timer", false,
			append(holding, dump(1000, twSock(1000, FW2, 59100)), dump(2000)),
			KindFinWait2Aborted, InitiatorLocal, []probe.State{SS, EST, FW1, FW2}, 2000, TWNone, 0},
		{"no FIN, no dump: tcp_fin_timeout assumed", false,
			[]step{func(b *Builder) { b.FinTimeout(7, 5*time.Second) }, events(orphanClient()...), tick(5101),
				tick(5101 + orphanGrace/ms + 1)},
			KindFinWait2Timeout, InitiatorLocal, []probe.State{SS, EST, FW1, FW2}, 5101, TWNone, 0},
		{"the peer wrote after our close: our time-wait socket's RST", false,
			append(holding, events(ev(2, 3000, probe.TypeResetReceived, CW, CW), st(2, 3000, CW, CLOSE, withErr(syscall.ECONNRESET))),
				tick(3100)),
			KindResetSent, InitiatorLocal, []probe.State{SS, EST, FW1, FW2}, 3000, TWNone, 0},
		{"the peer's RST", false,
			append(holding, events(st(2, 3000, CW, CLOSE), ev(2, 3000, probe.TypeResetSent, CLOSE, CLOSE)), tick(3100)),
			KindResetReceived, InitiatorLocal, []probe.State{SS, EST, FW1, FW2}, 3000, TWNone, 0},
		{"fentry: the kernel flags the orphan and sees its end", true,
			[]step{events(append(orphanClient()[:4], st(1, 101, FW2, CLOSE, withFlags(probe.FlagTimeWait|probe.FlagTWFinWait2)))...),
				events(holdingServer()...), tick(200), func(b *Builder) {
					end := st(1, 60101, CLOSE, CLOSE)
					end.Type, end.ConnId, end.Oldstate = uint8(probe.TypeTimeWaitEnd), 0, uint8(FW2)
					b.Event(&end)
				}},
			KindFinWait2Timeout, InitiatorLocal, []probe.State{SS, EST, FW1, FW2}, 60101, TWNone, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var s sink
			b := NewBuilder(Config{ExactTimeWait: tc.exact}, &s)
			for _, f := range tc.steps {
				f(b)
			}
			var r *Record
			for i := range s.closed {
				if s.closed[i].ID == 1 {
					r = &s.closed[i]
				}
			}
			if r == nil {
				t.Fatalf("client not closed; closed %d, FIN_WAIT2 %d", len(s.closed), b.StateCount(FW2))
			}
			if r.Kind != tc.kind || r.Initiator != tc.initiator {
				t.Errorf("kind %s by %s, want %s by %s", r.Kind, r.Initiator, tc.kind, tc.initiator)
			}
			if got := spans(r); !slices.Equal(got, tc.states) {
				t.Errorf("states %v, want %v", got, tc.states)
			}
			fw2 := r.Spans[3]
			if fw2.State != FW2 || fw2.Enter != 101*ms || fw2.Exit != tc.fw2End*ms || r.End != tc.fw2End*ms {
				t.Errorf("FIN_WAIT2 %d to %d, end %d; want 101 ms to %d ms", fw2.Enter, fw2.Exit, r.End, tc.fw2End)
			}
			if tc.tw != TWNone && (r.TimeWaitEnter != tc.fw2End*ms || r.Spans[4].Enter != tc.fw2End*ms) {
				t.Errorf("TIME_WAIT from %d, span from %d; want %d ms", r.TimeWaitEnter, r.Spans[4].Enter, tc.fw2End)
			}
			if r.Anomalies != 0 {
				t.Errorf("anomalies %v", r.Anomalies.Names(nil))
			}
			got := r
			if tc.tw != TWPending {
				for i := range s.finished {
					if s.finished[i].ID == 1 {
						got = &s.finished[i]
					}
				}
			}
			if got.TimeWait != tc.tw || got.TimeWaitExit != tc.twExit*ms {
				t.Errorf("TIME_WAIT end %s at %d, want %s at %d ms", got.TimeWait, got.TimeWaitExit, tc.tw, tc.twExit)
			}
		})
	}
}

// The gauges count an orphan in FIN_WAIT2 until its peer's FIN, then in
// TIME_WAIT, as ss does; it is not closed (nor counted closed) before.
func TestOrphanGauges(t *testing.T) {
	var s sink
	b := NewBuilder(Config{}, &s)
	gauges := func(when string, fw2, tw, cw int) {
		t.Helper()
		if b.StateCount(FW2) != fw2 || b.StateCount(TW) != tw || b.StateCount(CW) != cw {
			t.Errorf("%s: FIN_WAIT2 %d TIME_WAIT %d CLOSE_WAIT %d, want %d %d %d", when,
				b.StateCount(FW2), b.StateCount(TW), b.StateCount(CW), fw2, tw, cw)
		}
	}
	feed(b, orphanClient()...)
	feed(b, holdingServer()...)
	gauges("in its reset hold", 1, 0, 1)
	// Counted in FIN_WAIT2 while in its hold, it is listed as open too.
	listed := 0
	for r := range b.Open() {
		if r.ID == 1 && r.State == FW2 {
			listed++
		}
	}
	if listed != 1 || b.OpenCount() != 2 {
		t.Fatalf("in its reset hold: listed %d times, open %d; want 1, 2", listed, b.OpenCount())
	}
	b.Tick(200 * ms)
	gauges("orphaned", 1, 0, 1)
	if len(s.closed) != 0 || b.OrphanCount() != 1 || b.OpenCount() != 2 {
		t.Fatalf("closed %d, orphans %d, open %d", len(s.closed), b.OrphanCount(), b.OpenCount())
	}
	r, ok := b.Lookup(1)
	if state, since := r.Current(); !ok || state != FW2 || since != 101*ms {
		t.Errorf("current %s since %d", state, since)
	}
	if p, ok := b.Peer(r); !ok || p.ID != 2 {
		t.Errorf("peer %v %v", p, ok)
	}
	feed(b, serverCloses(5000)...)
	gauges("peer's FIN sent, not yet acknowledged", 1, 0, 0)
	b.Tick(5100 * ms)
	gauges("peer closed", 0, 1, 0)
	if len(s.closed) != 2 || b.OrphanCount() != 0 {
		t.Errorf("closed %d, orphans %d", len(s.closed), b.OrphanCount())
	}
	// Flushed while orphaned: open, in FIN_WAIT2.
	s = sink{}
	b = NewBuilder(Config{}, &s)
	feed(b, orphanClient()...)
	b.Tick(200 * ms)
	b.Flush()
	f := one(t, s.finished)
	if f.Kind != KindOpen || f.State != FW2 || f.End != 0 || len(s.closed) != 0 || b.Tracked() != 0 || b.StateCount(FW2) != 0 {
		t.Errorf("flushed orphan: %s in %s, end %d, closed %d, tracked %d", f.Kind, f.State, f.End, len(s.closed), b.Tracked())
	}
}

// A reset right after a CLOSE from FIN_WAIT2 (TCP_LINGER2 < 0, or an
// out-of-order FIN after close()): no time-wait socket took it.
func TestFinWait2CloseWithReset(t *testing.T) {
	var s sink
	b := NewBuilder(Config{}, &s)
	feed(b, orphanClient()...)
	feed(b, ev(1, 101, probe.TypeResetSent, CLOSE, CLOSE))
	b.Tick(200 * ms)
	r := one(t, s.closed)
	if r.Kind != KindResetSent || r.TimeWait != TWNone || r.End != 101*ms || len(s.finished) != 1 ||
		b.StateCount(FW2) != 0 || b.OrphanCount() != 0 || b.Tracked() != 0 {
		t.Errorf("%s tw %s end %d; FIN_WAIT2 %d orphans %d tracked %d", r.Kind, r.TimeWait, r.End,
			b.StateCount(FW2), b.OrphanCount(), b.Tracked())
	}
}

// Dumps of the namespace are asked for while an orphan waits, even with
// fentry, which reports no FIN; and while it is in TIME_WAIT, whose ends
// fentry does not always see.
func TestOrphanNamespacesPolled(t *testing.T) {
	b := NewBuilder(Config{ExactTimeWait: true}, Handlers(nil))
	feed(b, append(orphanClient()[:4], st(1, 101, FW2, CLOSE, withFlags(probe.FlagTimeWait|probe.FlagTWFinWait2)))...)
	if got := b.TimeWaitNetNS(nil); !slices.Equal(got, []uint32{7}) {
		t.Errorf("namespaces %v", got)
	}
	b.Tick(200 * ms)
	b.Observe(twSock(1000, TW, 59500))
	b.DumpDone(7, PurposeTimeWait, 1000*ms)
	if b.StateCount(TW) != 1 || b.StateCount(FW2) != 0 || !slices.Equal(b.TimeWaitNetNS(nil), []uint32{7}) {
		t.Errorf("TIME_WAIT %d FIN_WAIT2 %d namespaces %v", b.StateCount(TW), b.StateCount(FW2), b.TimeWaitNetNS(nil))
	}
}

// orphanTemplate is one connection of orphan churn: its client is
// orphaned, then its server closes; ids, times and ports are set per
// connection by orphanChurn.
var orphanTemplate = [...]probe.Event{
	st(1, 0, CLOSE, SS), st(2, 0, LST, SR), st(1, 1, SS, EST), st(2, 1, SR, EST),
	st(1, 2, EST, FW1), st(2, 2, EST, CW), st(1, 3, FW1, FW2), st(1, 3, FW2, CLOSE),
	st(2, 5, CW, LA), st(2, 6, LA, CLOSE, withFlags(probe.FlagFinAcked)),
}

// orphanChurn feeds n connections of orphan churn, 1 ms apart: the
// graceful close of a client that closes first against a server that
// closes when it has read everything.
func orphanChurn(b *Builder, from, n int) {
	var evs [len(orphanTemplate)]probe.Event
	for i := from; i < from+n; i++ {
		evs = orphanTemplate
		at := uint64(i) * ms
		port := uint16(1024 + i%60000)
		for j := range evs {
			e := &evs[j]
			e.TsNs += at
			if e.ConnId == 1 {
				e.Sport = port
			} else {
				e.Dport = port
			}
			e.ConnId += uint64(2 * i)
			b.Event(e)
		}
		b.Tick(at)
	}
}

// The orphan's path allocates nothing per connection once the tables
// have their size.
func TestOrphanChurnDoesNotAllocate(t *testing.T) {
	b := NewBuilder(Config{MaxTracked: 1 << 17}, Handlers(nil))
	orphanChurn(b, 0, 70000)
	next := 70000
	allocs := testing.AllocsPerRun(10, func() {
		orphanChurn(b, next, 1000)
		next += 1000
	})
	// As TestApplyWithMetadataDoesNotAllocate: the maps' amortized
	// growth, at most one per thousand events.
	if allocs > 10 {
		t.Errorf("%.1f allocations per 1000 connections (10000 events)", allocs)
	}
	b.Tick(uint64(next+20) * ms)
	if b.StateCount(TW) == 0 || b.StateCount(FW2) != 0 || b.OrphanCount() != 0 {
		t.Errorf("TIME_WAIT %d FIN_WAIT2 %d orphans %d", b.StateCount(TW), b.StateCount(FW2), b.OrphanCount())
	}
}

// BenchmarkOrphanChurn: one op is one event of orphan churn (10 per
// connection, 1000 connections a second, so 60000 in TIME_WAIT).
func BenchmarkOrphanChurn(bb *testing.B) {
	b := NewBuilder(Config{MaxTracked: 1 << 17}, Handlers(nil))
	orphanChurn(b, 0, 70000)
	bb.ReportAllocs()
	bb.ResetTimer()
	orphanChurn(b, 70000, bb.N/10+1)
}
