package lifecycle

import (
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Seeding, joining and reconciliation rules, on recorded-style inputs:
// each case feeds a sequence of inputs and checks the gauge, the open
// records and the repairs counted.

// in is one builder input of a case.
type in struct {
	ev    *probe.Event
	sock  *Socket
	done  Purpose // a DumpDone of netns 7 at doneAt ms
	doneT uint64
	tick  uint64 // ms
}

func evIn(e probe.Event) in { return in{ev: &e} }

// sockOf is the socket of connection id's end (see ev) in state s, as a
// dump at atMs with purpose p lists it.
func sockOf(id uint64, s probe.State, atMs uint64, p Purpose) in {
	e := st(id, 0, s, s)
	return in{sock: &Socket{Time: atMs * ms, NetNS: e.Netns, Family: e.Family, State: s, Purpose: p,
		Laddr: e.Saddr, Raddr: e.Daddr, Lport: e.Sport, Rport: e.Dport}}
}

func dumpDone(p Purpose, atMs uint64) in { return in{done: p, doneT: atMs} }

func run(b *Builder, ins []in) {
	for _, x := range ins {
		switch {
		case x.ev != nil:
			b.Event(x.ev)
		case x.sock != nil:
			b.Observe(x.sock)
		case x.done != 0:
			b.DumpDone(7, x.done, x.doneT*ms)
		default:
			b.Tick(x.tick * ms)
		}
	}
}

func openStates(b *Builder) map[probe.State]int {
	m := map[probe.State]int{}
	for r := range b.Open() {
		s, _ := r.Current()
		m[s]++
	}
	return m
}

func TestSeedJoinReconcileRules(t *testing.T) {
	partial := withFlags(probe.FlagPartial)
	const snap, rec = PurposeSnapshot, PurposeReconcile
	begin := func(at uint64) in { return dumpDone(PurposeReconcileBegin, at) }
	cases := []struct {
		name    string
		ins     []in
		states  map[probe.State]int // the gauge, every state listed
		records uint64              // records opened by events
		seeded  uint64              // Stats.Seeded
		joined  uint64              // Stats.SeededStart
		actions [ReconcileActions]uint64
		check   func(t *testing.T, s *sink, b *Builder)
	}{
		{name: "seed counts at once",
			ins:    []in{sockOf(1, EST, 10, snap), sockOf(2, CW, 10, snap), dumpDone(snap, 11)},
			states: map[probe.State]int{EST: 1, CW: 1}, seeded: 2},
		{name: "first event joins the seed",
			ins:    []in{sockOf(1, EST, 10, snap), dumpDone(snap, 11), evIn(st(1, 20, EST, FW1, partial))},
			states: map[probe.State]int{FW1: 1}, seeded: 1, joined: 1,
			check: func(t *testing.T, s *sink, b *Builder) {
				r, ok := b.Lookup(1)
				if !ok || !r.Seeded || r.NSpan != 2 || r.Spans[0].Enter != 0 || r.Spans[1].Enter != 20*ms ||
					r.Anomalies != AnomalyPartial {
					t.Errorf("joined record %+v", r)
				}
				if r2, ok := b.Lookup(SeedIDBit | 1); !ok || r2 != r {
					t.Error("the seed id no longer finds the record")
				}
			}},
		{name: "event from before the dump's view wins, no mismatch",
			// The dump listed FIN_WAIT1, the event it saw ESTABLISHED end.
			ins:    []in{sockOf(1, FW1, 10, snap), dumpDone(snap, 11), evIn(st(1, 9, EST, FW1, partial))},
			states: map[probe.State]int{FW1: 1}, seeded: 1, joined: 1,
			check: func(t *testing.T, s *sink, b *Builder) {
				r, _ := b.Lookup(1)
				if spans(r)[0] != EST || r.Anomalies != AnomalyPartial {
					t.Errorf("spans %v anomalies %v", spans(r), r.Anomalies)
				}
			}},
		{name: "socket born during the dump replaces its seed",
			ins: []in{sockOf(1, EST, 10, snap), dumpDone(snap, 11),
				evIn(st(1, 9, CLOSE, SS)), evIn(st(1, 9, SS, EST))},
			states: map[probe.State]int{EST: 1}, records: 1, seeded: 0,
			check: func(t *testing.T, s *sink, b *Builder) {
				r, _ := b.Lookup(1)
				if r.Seeded || r.Anomalies != 0 || len(s.finished) != 0 {
					t.Errorf("record %+v, %d handed out", r, len(s.finished))
				}
			}},
		{name: "a seed's reset before its close joins it",
			ins: []in{sockOf(1, EST, 10, snap), dumpDone(snap, 11),
				evIn(ev(1, 20, probe.TypeResetReceived, EST, EST)), evIn(st(1, 20, EST, CLOSE, partial)), {tick: 100}},
			states: map[probe.State]int{}, seeded: 1, joined: 1,
			check: func(t *testing.T, s *sink, b *Builder) {
				if len(s.finished) != 1 || s.finished[0].Kind != KindResetReceived || s.finished[0].ID != 1 || !s.finished[0].Seeded {
					t.Errorf("finished %+v", s.finished)
				}
			}},
		{name: "listeners sharing a port each join one seed",
			ins: []in{sockOf(2, LST, 10, snap), sockOf(2, LST, 10, snap), dumpDone(snap, 11),
				evIn(st(2, 20, LST, CLOSE)), evIn(st(4, 21, LST, CLOSE, func(e *probe.Event) { e.Sport, e.Dport = 80, 40000 }))},
			states: map[probe.State]int{}, seeded: 2, joined: 2},
		{name: "reconcile seeds what is missing, flagged",
			ins:    []in{begin(100), sockOf(1, CW, 100, rec), dumpDone(rec, 100)},
			states: map[probe.State]int{CW: 1}, seeded: 1, actions: [ReconcileActions]uint64{1, 0, 0},
			check: func(t *testing.T, s *sink, b *Builder) {
				for r := range b.Open() {
					if r.Anomalies != AnomalyPartial|AnomalyEventsLost {
						t.Errorf("anomalies %v", r.Anomalies)
					}
				}
			}},
		{name: "reconcile ends what vanished, unobserved",
			ins:    []in{evIn(st(1, 10, CLOSE, SS)), evIn(st(1, 11, SS, EST)), begin(100), dumpDone(rec, 100)},
			states: map[probe.State]int{}, records: 1, actions: [ReconcileActions]uint64{0, 1, 0},
			check: func(t *testing.T, s *sink, b *Builder) {
				if len(s.finished) != 1 || s.finished[0].Kind != KindUnobserved || s.finished[0].End != 100*ms ||
					s.finished[0].Anomalies != AnomalyEventsLost {
					t.Errorf("finished %+v", s.finished)
				}
			}},
		{name: "reconcile corrects a state",
			ins:    []in{evIn(st(1, 10, CLOSE, SS)), evIn(st(1, 11, SS, EST)), begin(100), sockOf(1, FW2, 100, rec), dumpDone(rec, 100)},
			states: map[probe.State]int{FW2: 1}, records: 1, actions: [ReconcileActions]uint64{0, 0, 1},
			check: func(t *testing.T, s *sink, b *Builder) {
				r, _ := b.Lookup(1)
				age, exact := r.StateAge(150 * ms)
				if spans(r)[2] != FW2 || r.Spans[2].Enter != 0 || exact || age != 50*ms || r.Anomalies != AnomalyEventsLost {
					t.Errorf("spans %v age %d %v anomalies %v", spans(r), age, exact, r.Anomalies)
				}
			}},
		{name: "a record with events since the dump began is left alone",
			ins: []in{evIn(st(1, 10, CLOSE, SS)), evIn(st(1, 11, SS, EST)), begin(100),
				evIn(st(1, 101, EST, FW1)), sockOf(1, EST, 100, rec), dumpDone(rec, 100)},
			states: map[probe.State]int{FW1: 1}, records: 1},
		{name: "a tuple closed during the dump is not brought back",
			ins: []in{evIn(st(1, 10, CLOSE, SS)), evIn(st(1, 11, SS, EST)), begin(100),
				evIn(st(1, 101, EST, CLOSE)), {tick: 200}, sockOf(1, EST, 100, rec), dumpDone(rec, 100)},
			states: map[probe.State]int{}, records: 1},
		{name: "an aborted dump repairs nothing",
			ins: []in{evIn(st(1, 10, CLOSE, SS)), evIn(st(1, 11, SS, EST)), begin(100),
				dumpDone(PurposeReconcileAbort, 100), dumpDone(rec, 100)},
			states: map[probe.State]int{EST: 1}, records: 1},
		{name: "an unflagged record stays unflagged",
			ins:    []in{evIn(st(1, 10, CLOSE, SS)), evIn(st(1, 11, SS, EST)), begin(100), sockOf(1, EST, 100, rec), dumpDone(rec, 100)},
			states: map[probe.State]int{EST: 1}, records: 1,
			check: func(t *testing.T, s *sink, b *Builder) {
				if r, _ := b.Lookup(1); r.Anomalies != 0 {
					t.Errorf("anomalies %v", r.Anomalies)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var s sink
			b := NewBuilder(Config{}, &s)
			run(b, c.ins)
			for st := probe.State(1); st <= probe.MaxState; st++ {
				if st == TW {
					continue
				}
				if got := b.StateCount(st); got != c.states[st] {
					t.Errorf("%s: gauge %d, want %d", st, got, c.states[st])
				}
			}
			if got := openStates(b); len(got) != len(c.states) {
				t.Errorf("open records by state %v, want %v", got, c.states)
			}
			stt := b.Stats()
			if stt.Records != c.records || stt.Seeded != c.seeded || stt.SeededStart != c.joined || stt.Reconciled != c.actions {
				t.Errorf("records %d seeded %d joined %d actions %v; want %d %d %d %v",
					stt.Records, stt.Seeded, stt.SeededStart, stt.Reconciled, c.records, c.seeded, c.joined, c.actions)
			}
			if c.check != nil {
				c.check(t, &s, b)
			}
		})
	}
}
