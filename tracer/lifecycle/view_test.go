package lifecycle

import (
	"slices"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

func withPorts(local, remote uint16) evOpt {
	return func(e *probe.Event) { e.Sport, e.Dport = local, remote }
}

// openIDs lists the ids Open visits, sorted.
func openIDs(b *Builder) []uint64 {
	var ids []uint64
	for r := range b.Open() {
		ids = append(ids, r.ID)
	}
	slices.Sort(ids)
	return ids
}

// The view of open records: connections not closed and those in
// TIME_WAIT, each with its current state and when it entered it; a
// connection found midway has an unknown entry, and its age is a lower
// bound from when it was first seen.
func TestOpenView(t *testing.T) {
	var s sink
	b := NewBuilder(Config{}, &s)
	feed(b,
		// 1 (client) and 2 (server): established at 12 ms, the client
		// closes at 20 ms: 2 sits in CLOSE_WAIT, and 1, orphaned, in
		// FIN_WAIT2 (handed to a time-wait socket at 22 ms).
		st(1, 10, CLOSE, SS), st(2, 11, LST, SR), st(1, 12, SS, EST), st(2, 12, SR, EST),
		st(1, 20, EST, FW1), st(2, 20, EST, CW), st(1, 21, FW1, FW2), st(1, 22, FW2, CLOSE),
		// 3: found midway, ESTABLISHED -> FIN_WAIT1 at 30 ms.
		st(3, 30, EST, FW1, withFlags(probe.FlagPartial), withPorts(40003, 80)),
		// 5: opened and closed by a reset: gone.
		st(5, 31, CLOSE, SS, withPorts(40005, 80)), st(5, 32, SS, CLOSE, withPorts(40005, 80)),
	)
	b.Tick(100 * ms)
	if got, want := openIDs(b), []uint64{1, 2, 3}; !slices.Equal(got, want) {
		t.Fatalf("open %v, want %v", got, want)
	}
	if b.OpenCount() != 3 {
		t.Errorf("OpenCount %d", b.OpenCount())
	}
	now := uint64(1000 * ms)
	for _, c := range []struct {
		id       uint64
		state    probe.State
		since    uint64
		age      uint64
		exact    bool
		lifetime uint64
		lifeOK   bool
	}{
		{1, FW2, 21 * ms, 979 * ms, true, 990 * ms, true},
		{2, CW, 20 * ms, 980 * ms, true, 989 * ms, true},
		{3, FW1, 30 * ms, 970 * ms, true, 970 * ms, false},
	} {
		r, ok := b.Lookup(c.id)
		if !ok {
			t.Fatalf("Lookup(%d): not found", c.id)
		}
		state, since := r.Current()
		age, exact := r.StateAge(now)
		life, lifeOK := r.Age(now)
		if state != c.state || since != c.since || age != c.age || exact != c.exact || life != c.lifetime || lifeOK != c.lifeOK {
			t.Errorf("record %d: %s since %d, age %d exact %v, lifetime %d exact %v; want %s since %d, age %d exact %v, lifetime %d exact %v",
				c.id, state, since, age, exact, life, lifeOK, c.state, c.since, c.age, c.exact, c.lifetime, c.lifeOK)
		}
	}
	// The midway record's first span, the state before the event, has no
	// known entry: had it no event yet, its state age would be a lower
	// bound since it was first seen.
	r, _ := b.Lookup(3)
	if r.Spans[0].State != EST || r.Spans[0].Enter != 0 {
		t.Errorf("first span %+v", r.Spans[0])
	}
	midway := *r
	midway.NSpan = 1
	midway.State = EST
	if st, since := midway.Current(); st != EST || since != 0 {
		t.Errorf("in its first state: %s since %d, want ESTABLISHED since unknown", st, since)
	}
	if age, exact := midway.StateAge(now); age != 970*ms || exact {
		t.Errorf("age %d exact %v, want at least 970 ms", age, exact)
	}

	// The peer of the CLOSE_WAIT end is the client end in FIN_WAIT2.
	r2, _ := b.Lookup(2)
	if p, ok := b.Peer(r2); !ok || p.ID != 1 {
		t.Errorf("peer of 2: %v %v", p, ok)
	}
	if _, ok := b.Lookup(5); ok {
		t.Error("a finished record is still looked up")
	}
	// Open stops when asked.
	n := 0
	for range b.Open() {
		n++
		break
	}
	if n != 1 {
		t.Errorf("Open did not stop: %d", n)
	}
}
