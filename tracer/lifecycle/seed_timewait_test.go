package lifecycle

import (
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Time-wait sockets a dump lists without a record are seeded records:
// TIME_WAIT ones closed (graceful) and waiting out their timer,
// FIN_WAIT2 ones orphans. Each ends as the kernel drops it.

// seededTW feeds the start snapshot: the client's time-wait socket at
// 1000 ms in substate, its timer expiresMs.
func seededTW(b *Builder, substate probe.State, expiresMs uint32) {
	s := twSock(1000, substate, expiresMs)
	s.Purpose = PurposeSnapshot
	b.Observe(s)
	b.DumpDone(7, PurposeSnapshot, 1000*ms)
}

func TestSeedTimeWaitRecord(t *testing.T) {
	var s sink
	b := NewBuilder(Config{}, &s)
	seededTW(b, TW, 30000)
	if b.Tracked() != 1 || b.StateCount(TW) != 1 || b.StateCount(FW2) != 0 || b.OpenCount() != 1 || b.Stats().Seeded != 1 {
		t.Fatalf("tracked %d TIME_WAIT %d FIN_WAIT2 %d open %d seeded %d", b.Tracked(), b.StateCount(TW),
			b.StateCount(FW2), b.OpenCount(), b.Stats().Seeded)
	}
	var n int
	for r := range b.Open() {
		n++
		st, since := r.Current()
		age, exact := r.StateAge(3000 * ms)
		life, lifeExact := r.Age(3000 * ms)
		if st != TW || since != 0 || age != 2000*ms || exact || life != 0 || lifeExact || !r.Seeded ||
			r.Anomalies != AnomalyPartial || r.OwnerKnown() || r.ID&SeedIDBit == 0 || r.End != 0 || r.TimeWaitEnter != 0 {
			t.Errorf("open: %s since %d, age %d exact %v, life %d exact %v, %+v", st, since, age, exact, life, lifeExact, *r)
		}
	}
	if n != 1 {
		t.Fatalf("Open listed %d", n)
	}
	// Listed with its timer, then gone once it has passed (31 s).
	b.Observe(twSock(2000, TW, 29000))
	b.DumpDone(7, PurposeTimeWait, 2000*ms)
	if len(s.finished) != 0 {
		t.Fatalf("ended while listed: %+v", s.finished)
	}
	b.DumpDone(7, PurposeTimeWait, 32000*ms)
	if len(s.closed) != 0 || len(s.finished) != 1 {
		t.Fatalf("closed %d finished %d", len(s.closed), len(s.finished))
	}
	f := s.finished[0]
	if f.Kind != KindGraceful || f.TimeWait != TWSockDiag || f.TimeWaitExit != 31000*ms || f.TimeWaitEnter != 0 ||
		f.TimeWaitNs() != 0 || f.TimeWaitAtLeastNs() != 30000*ms || f.End != 0 || f.LifetimeKnown() ||
		f.NSpan != 1 || f.Spans[0] != (Span{State: TW, Exit: 31000 * ms}) || f.Lport != 40000 || f.Rport != 80 {
		t.Errorf("finished: %+v", f)
	}
	if b.Tracked() != 0 || b.StateCount(TW) != 0 {
		t.Errorf("after: tracked %d TIME_WAIT %d", b.Tracked(), b.StateCount(TW))
	}
}

// How else a seeded TIME_WAIT ends: killed early (gone from a dump
// before its timer), fentry, its timer where no dump sees the namespace,
// a connect() reusing its endpoints; the same connection's close
// applied after the dump replaces the seed.
func TestSeedTimeWaitEnds(t *testing.T) {
	end := st(1, 5000, CLOSE, CLOSE)
	end.Type, end.ConnId, end.Oldstate = uint8(probe.TypeTimeWaitEnd), 0, uint8(TW)
	cases := []struct {
		name  string
		exact bool
		then  func(b *Builder)
		how   TimeWaitEnd
		exit  uint64
	}{
		{"killed early", false, func(b *Builder) { b.DumpDone(7, PurposeTimeWait, 5000*ms) }, TWSockDiag, 5000 * ms},
		{"fentry", true, func(b *Builder) { feed(b, end) }, TWExact, 5000 * ms},
		{"timer, no dump", false, func(b *Builder) { b.Tick(32000 * ms); b.Tick(33000 * ms) }, TWAssumed, 31000 * ms},
		{"timer, fentry missed it", true, func(b *Builder) { b.Tick(33000 * ms) }, TWAssumed, 31000 * ms},
		{"reused by connect", false, func(b *Builder) { feed(b, st(1, 4000, CLOSE, SS)) }, TWReused, 4000 * ms},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var s sink
			b := NewBuilder(Config{ExactTimeWait: c.exact}, &s)
			seededTW(b, TW, 30000)
			c.then(b)
			if len(s.finished) != 1 || len(s.closed) != 0 {
				t.Fatalf("closed %d finished %d", len(s.closed), len(s.finished))
			}
			f := s.finished[0]
			if !f.Seeded || f.Kind != KindGraceful || f.TimeWait != c.how || f.TimeWaitExit != c.exit ||
				f.TimeWaitAtLeastNs() != c.exit-1000*ms || b.StateCount(TW) != 0 {
				t.Errorf("%s at %d (at least %d), %s; TIME_WAIT %d", f.TimeWait, f.TimeWaitExit,
					f.TimeWaitAtLeastNs(), f.Kind, b.StateCount(TW))
			}
		})
	}
}

// The snapshot lists a connection's time-wait socket before its close is
// applied: the connection's record takes TIME_WAIT over, the seed goes
// unreported, and the gauge counts one.
func TestSeedTimeWaitRaceWithClose(t *testing.T) {
	var s sink
	b := NewBuilder(Config{}, &s)
	seededTW(b, TW, 59990)
	feed(b, st(1, 995, EST, FW1), st(1, 996, FW1, FW2, withFlags(probe.FlagFinAcked)),
		st(1, 997, FW2, CLOSE, withFlags(probe.FlagFinAcked|probe.FlagFinReceived)))
	b.Tick(2000 * ms)
	if len(s.closed) != 1 || b.StateCount(TW) != 1 || b.Tracked() != 1 || b.Stats().Seeded != 0 {
		t.Fatalf("closed %d TIME_WAIT %d tracked %d seeded %d", len(s.closed), b.StateCount(TW), b.Tracked(), b.Stats().Seeded)
	}
	if c := s.closed[0]; c.ID != 1 || c.Seeded || c.TimeWait != TWPending || c.TimeWaitEnter != 997*ms || c.twExpected != 60990*ms {
		t.Errorf("the connection's record: %+v", c)
	}
	b.DumpDone(7, PurposeTimeWait, 62000*ms)
	if len(s.finished) != 1 || s.finished[0].ID != 1 || s.finished[0].TimeWaitExit != 60990*ms {
		t.Errorf("finished %+v", s.finished)
	}
	// A connection that opened after the dump reused the endpoints: the
	// seed ended there.
	var s2 sink
	b = NewBuilder(Config{}, &s2)
	seededTW(b, TW, 59990)
	feed(b, st(3, 1500, LST, SR, func(e *probe.Event) { e.Sport, e.Dport = 40000, 80 }))
	if len(s2.finished) != 0 {
		t.Fatalf("ended at a SYN: %+v", s2.finished)
	}
	feed(b, st(3, 1501, SR, EST, func(e *probe.Event) { e.Sport, e.Dport = 40000, 80 }),
		st(3, 1600, EST, FW1, func(e *probe.Event) { e.Sport, e.Dport = 40000, 80 }),
		st(3, 1601, FW1, FW2, func(e *probe.Event) { e.Sport, e.Dport = 40000, 80; e.Flags = probe.FlagFinAcked }),
		st(3, 1602, FW2, CLOSE, func(e *probe.Event) {
			e.Sport, e.Dport = 40000, 80
			e.Flags = probe.FlagFinAcked | probe.FlagFinReceived
		}))
	b.Tick(3000 * ms)
	if len(s2.finished) != 1 || !s2.finished[0].Seeded || s2.finished[0].TimeWait != TWReused ||
		s2.finished[0].TimeWaitExit != 1602*ms || b.StateCount(TW) != 1 {
		t.Errorf("reused: %+v; TIME_WAIT %d", s2.finished, b.StateCount(TW))
	}
}

// A time-wait socket in FIN_WAIT2 is an orphan: FIN_WAIT2 in the
// gauges, until the peer's FIN (TIME_WAIT, closed graceful) or its timer
// (fin_wait2_timeout).
func TestSeedFinWait2Orphan(t *testing.T) {
	t.Run("peer's FIN", func(t *testing.T) {
		var s sink
		b := NewBuilder(Config{}, &s)
		seededTW(b, FW2, 30000)
		if b.StateCount(FW2) != 1 || b.StateCount(TW) != 0 || b.OrphanCount() != 1 || b.Tracked() != 1 {
			t.Fatalf("FIN_WAIT2 %d TIME_WAIT %d orphans %d", b.StateCount(FW2), b.StateCount(TW), b.OrphanCount())
		}
		for r := range b.Open() {
			if st, since := r.Current(); st != FW2 || since != 0 || !r.Seeded || r.End != 0 {
				t.Errorf("open: %s since %d %+v", st, since, *r)
			}
		}
		// Its FIN came at 1500 ms: TIME_WAIT's timer ends 60 s later.
		b.Observe(twSock(2000, TW, 59500))
		b.DumpDone(7, PurposeTimeWait, 2000*ms)
		if b.StateCount(FW2) != 0 || b.StateCount(TW) != 1 || len(s.closed) != 1 {
			t.Fatalf("after its FIN: FIN_WAIT2 %d TIME_WAIT %d closed %d", b.StateCount(FW2), b.StateCount(TW), len(s.closed))
		}
		c := s.closed[0]
		if c.Kind != KindGraceful || c.Initiator != InitiatorLocal || c.End != 1500*ms || c.TimeWaitEnter != 1500*ms ||
			c.NSpan != 2 || c.Spans[0] != (Span{State: FW2, Exit: 1500 * ms}) || c.Spans[1] != (Span{State: TW, Enter: 1500 * ms}) {
			t.Errorf("closed: %+v", c)
		}
		b.DumpDone(7, PurposeTimeWait, 62000*ms)
		if len(s.finished) != 1 || s.finished[0].TimeWait != TWSockDiag || s.finished[0].TimeWaitNs() != 60000*ms ||
			b.StateCount(TW) != 0 || b.Tracked() != 0 {
			t.Errorf("finished %+v", s.finished)
		}
	})
	t.Run("tcp_fin_timeout", func(t *testing.T) {
		var s sink
		b := NewBuilder(Config{}, &s)
		seededTW(b, FW2, 3000)
		b.Observe(twSock(2000, FW2, 2000))
		b.DumpDone(7, PurposeTimeWait, 2000*ms)
		b.DumpDone(7, PurposeTimeWait, 5000*ms)
		if len(s.closed) != 1 || len(s.finished) != 1 || b.StateCount(FW2) != 0 || b.Tracked() != 0 {
			t.Fatalf("closed %d finished %d FIN_WAIT2 %d", len(s.closed), len(s.finished), b.StateCount(FW2))
		}
		if f := s.finished[0]; f.Kind != KindFinWait2Timeout || f.End != 4000*ms || f.TimeWait != TWNone || !f.Seeded {
			t.Errorf("finished: %+v", f)
		}
	})
	t.Run("its own CLOSE after the dump", func(t *testing.T) {
		var s sink
		b := NewBuilder(Config{}, &s)
		seededTW(b, FW2, 59000)
		feed(b, st(1, 990, EST, FW1), st(1, 991, FW1, FW2, withFlags(probe.FlagFinAcked)),
			st(1, 992, FW2, CLOSE, withFlags(probe.FlagFinAcked)))
		b.Tick(2000 * ms)
		if b.StateCount(FW2) != 1 || b.OrphanCount() != 1 || b.Tracked() != 1 || b.Stats().Seeded != 0 || len(s.finished) != 0 {
			t.Errorf("FIN_WAIT2 %d orphans %d tracked %d seeded %d finished %+v", b.StateCount(FW2), b.OrphanCount(),
				b.Tracked(), b.Stats().Seeded, s.finished)
		}
	})
}

// A reconciliation seeds the time-wait sockets no record holds, flagged
// events_lost, and counts them.
func TestReconcileSeedsTimeWait(t *testing.T) {
	var s sink
	b := NewBuilder(Config{}, &s)
	b.DumpDone(7, PurposeReconcileBegin, 1000*ms)
	tw := twSock(1000, TW, 30000)
	tw.Purpose = PurposeReconcile
	fw2 := twSock(1000, FW2, 30000)
	fw2.Purpose, fw2.Lport = PurposeReconcile, 40001
	b.Observe(tw)
	b.Observe(fw2)
	b.DumpDone(7, PurposeReconcile, 1000*ms)
	st := b.Stats()
	if b.StateCount(TW) != 1 || b.StateCount(FW2) != 1 || b.Tracked() != 2 || st.Reconciled[ReconcileSeeded] != 2 ||
		st.Anomalies[3] != 2 || st.Seeded != 2 {
		t.Fatalf("TIME_WAIT %d FIN_WAIT2 %d tracked %d stats %+v", b.StateCount(TW), b.StateCount(FW2), b.Tracked(), st)
	}
	// The next reconciliation lists neither: both ended.
	b.DumpDone(7, PurposeReconcileBegin, 40000*ms)
	b.DumpDone(7, PurposeReconcile, 40000*ms)
	if len(s.finished) != 2 || b.Tracked() != 0 || b.StateCount(TW) != 0 || b.StateCount(FW2) != 0 {
		t.Fatalf("finished %d, tracked %d", len(s.finished), b.Tracked())
	}
	for _, f := range s.finished {
		if f.Anomalies != AnomalyPartial|AnomalyEventsLost {
			t.Errorf("%d: anomalies %v", f.Lport, f.Anomalies.Names(nil))
		}
		switch f.Lport {
		case 40000:
			if f.TimeWait != TWSockDiag || f.TimeWaitExit != 31000*ms || f.Kind != KindGraceful {
				t.Errorf("TIME_WAIT: %+v", f)
			}
		case 40001:
			if f.Kind != KindFinWait2Timeout || f.End != 31000*ms {
				t.Errorf("FIN_WAIT2: %+v", f)
			}
		}
	}
}

// A reconciliation's dump lists a time-wait socket that ends (fentry's
// end, or a time-wait poll that no longer lists it) before the dump's
// sockets are applied: the record that held it ended since the dump
// began, and the dump's listing of it is no socket to seed again. Seen
// in the kernel VMs, where TestAgentSeedsTimeWaitSockets's orphans die
// about when the first reconciliation runs: two records of each, two
// fin_wait2_timeout closes, the second flagged events_lost.
func TestReconcileWhileTimeWaitEnds(t *testing.T) {
	fentryEnd := func(atMs uint64, substate probe.State) step {
		return func(b *Builder) {
			e := st(1, atMs, CLOSE, CLOSE)
			e.Type, e.ConnId, e.Oldstate = uint8(probe.TypeTimeWaitEnd), 0, uint8(substate)
			feed(b, e)
		}
	}
	cases := []struct {
		name     string
		substate probe.State
		exact    bool
		seed     step // the record holding the time-wait socket, which dies at 31 s
		end      step // its end, after the reconciliation's begin at 30.5 s
		kind     Kind
		tw       TimeWaitEnd
		seeded   uint64
	}{
		{"seeded orphan, fentry", FW2, true, func(b *Builder) { seededTW(b, FW2, 30000) }, fentryEnd(31000, FW2),
			KindFinWait2Timeout, TWNone, 1},
		{"seeded orphan, dump", FW2, false, func(b *Builder) { seededTW(b, FW2, 30000) }, dump(31200),
			KindFinWait2Timeout, TWNone, 1},
		{"seeded orphan, fentry, poll", FW2, true, func(b *Builder) { seededTW(b, FW2, 30000) }, dump(31200),
			KindFinWait2Timeout, TWNone, 1},
		{"seeded TIME_WAIT, fentry", TW, true, func(b *Builder) { seededTW(b, TW, 30000) }, fentryEnd(31000, TW),
			KindGraceful, TWExact, 1},
		{"seeded TIME_WAIT, dump", TW, false, func(b *Builder) { seededTW(b, TW, 30000) }, dump(31200),
			KindGraceful, TWSockDiag, 1},
		{"orphan, fentry", FW2, true, func(b *Builder) {
			feed(b, orphanClient()[:4]...)
			feed(b, st(1, 101, FW2, CLOSE, withFlags(probe.FlagFinAcked|probe.FlagTimeWait|probe.FlagTWFinWait2)))
			b.Tick(1000 * ms)
			dump(1000, twSock(1000, FW2, 30000))(b)
		}, fentryEnd(31000, FW2), KindFinWait2Timeout, TWNone, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var s sink
			b := NewBuilder(Config{ExactTimeWait: c.exact}, &s)
			c.seed(b)
			// Polled and listed until the reconciliation begins.
			dump(30000, twSock(30000, c.substate, 1000))(b)
			b.DumpDone(7, PurposeReconcileBegin, 30500*ms)
			c.end(b)
			rs := twSock(30500, c.substate, 500)
			rs.Purpose = PurposeReconcile
			b.Observe(rs)
			b.DumpDone(7, PurposeReconcile, 30500*ms)
			if b.Tracked() != 0 || b.StateCount(c.substate) != 0 || b.OrphanCount() != 0 {
				t.Errorf("after the reconciliation: tracked %d, %s %d, orphans %d", b.Tracked(), c.substate,
					b.StateCount(c.substate), b.OrphanCount())
			}
			// Whatever else comes, nothing more ends.
			dump(32000)(b)
			b.Tick(100_000 * ms)
			st := b.Stats()
			if len(s.finished) != 1 || st.Reconciled != [ReconcileActions]uint64{} || st.Seeded != c.seeded ||
				st.Anomalies[3] != 0 {
				t.Fatalf("finished %d, stats %+v", len(s.finished), st)
			}
			f := s.finished[0]
			if f.Kind != c.kind || f.TimeWait != c.tw || f.Anomalies&AnomalyEventsLost != 0 {
				t.Errorf("finished: %s, TIME_WAIT %s, anomalies %v", f.Kind, f.TimeWait, f.Anomalies.Names(nil))
			}
		})
	}
}

// A time-wait poll applied between a reconciliation's sockets and its
// end (its dump began later, its batch came in between): the
// reconciliation's end must not take the poll's later sighting for none.
// It ended a live orphan as aborted, and the next reconciliation seeded
// it again (the 6.12 VM, reconciling every second).
func TestReconcileWithPollInBetween(t *testing.T) {
	for _, substate := range []probe.State{FW2, TW} {
		for _, exact := range []bool{false, true} {
			var s sink
			b := NewBuilder(Config{ExactTimeWait: exact}, &s)
			seededTW(b, substate, 59000)
			for _, at := range []uint64{30000, 31000} {
				b.DumpDone(7, PurposeReconcileBegin, at*ms)
				rs := twSock(at, substate, uint32(60000-at))
				rs.Purpose = PurposeReconcile
				b.Observe(rs)
				dump(at+500, twSock(at+500, substate, uint32(59500-at)))(b)
				b.DumpDone(7, PurposeReconcile, at*ms)
			}
			st := b.Stats()
			if len(s.closed) != 0 || len(s.finished) != 0 || b.Tracked() != 1 || b.StateCount(substate) != 1 ||
				st.Reconciled != [ReconcileActions]uint64{} || st.Seeded != 1 {
				t.Errorf("%s, exact %v: closed %+v, finished %+v, tracked %d, stats %+v", substate, exact, s.closed, s.finished,
					b.Tracked(), st)
			}
		}
	}
}
