package lifecycle

import (
	"iter"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// The read-only view of what is open now: the records of connections not
// yet closed and of those in TIME_WAIT, for readers that show them (the
// agent's API, tcpfsm top, the stuck-connection gauges). Nothing here
// changes the builder: readers hold the lock the builder's feeder holds
// (session.With), copy what they need and let go.

// Open iterates over the open records: every connection not closed yet,
// the least recently active first (so a reader after the longest in their
// states meets them early), then those in TIME_WAIT. Each is a copy
// filled for the iteration (the builder keeps its records in slots,
// slot.go): its pointer stays valid while the builder is not changed;
// readers must not change it. Visit is the same without a copy to keep.
func (b *Builder) Open() iter.Seq[*Record] {
	return func(yield func(*Record) bool) {
		var batch []Record
		b.eachOpen(func(i int32, c *slot) bool {
			if len(batch) == 0 {
				batch = make([]Record, min(64, max(1, b.OpenCount())))
			}
			r := &batch[0]
			batch = batch[1:]
			b.fill(i, r, 0)
			return yield(r)
		})
	}
}

// Visit iterates over the open records as Open does, each filled into
// one Record the iteration reuses: its pointer is valid only during its
// step. For readers that keep copies of the few they want (exporter/connview).
func (b *Builder) Visit() iter.Seq[*Record] {
	return func(yield func(*Record) bool) {
		r := new(Record)
		b.eachOpen(func(i int32, c *slot) bool {
			b.fill(i, r, 0)
			return yield(r)
		})
	}
}

// eachOpen calls f with the index and slot of each record Open visits, in order,
// until f returns false.
func (b *Builder) eachOpen(f func(int32, *slot) bool) {
	for i := b.tail; i >= 0; i = b.rec(i).prev {
		if !f(i, b.rec(i)) {
			return
		}
	}
	for _, i := range b.timeWait {
		if !f(i, b.rec(i)) {
			return
		}
	}
	for _, i := range b.held {
		if r := b.rec(i); b.orphanCandidate(r) {
			if !f(i, r) {
				return
			}
		}
	}
}

// orphanCandidate: a CLOSE from FIN_WAIT2 waiting out its reset hold to
// become an orphan (orphan.go). The gauges count it in FIN_WAIT2, so the
// readers of what is open see it too.
func (b *Builder) orphanCandidate(r *slot) bool {
	return !r.is(fOrphan) && r.End == 0 && b.cl(r).orphanAt != 0
}

// OpenCount is how many records Open visits.
func (b *Builder) OpenCount() int {
	n := b.open + len(b.timeWait)
	for _, i := range b.held {
		if b.orphanCandidate(b.rec(i)) {
			n++
		}
	}
	return n
}

// Lookup returns the record with this connection id while the builder
// holds it: open, in TIME_WAIT, or closed and waiting out its reset hold.
// It is a copy, valid only while the caller holds the builder; looking
// up the same record again (by any of its ids) refills the same copy.
func (b *Builder) Lookup(id uint64) (*Record, bool) {
	i, ok := b.byID[k64(id)]
	if !ok {
		return nil, false
	}
	if b.looked == nil || b.lookedAt != i {
		b.looked, b.lookedAt = new(Record), i
	}
	b.fill(i, b.looked, 0)
	return b.looked, true
}

// Peer returns a copy of the open record of the connection's other end
// when it is on this host too (its local endpoint is r's remote one), for
// ladders. It looks at every open record: for one connection at a time.
func (b *Builder) Peer(r *Record) (*Record, bool) {
	var found *Record
	b.eachOpen(func(i int32, o *slot) bool {
		if o.ID != r.ID && o.Family == r.Family && o.Lport == r.Rport && o.Rport == r.Lport &&
			o.Laddr == r.Raddr && o.Raddr == r.Laddr && o.Role != RoleListener {
			found = new(Record)
			b.fill(i, found, 0)
			return false
		}
		return true
	})
	return found, found != nil
}

// CgroupOf is the cgroup path and container ("runtime:id", or "") the
// builder was told for a cgroup id; open records carry only the id.
func (b *Builder) CgroupOf(id uint64) (path, container string) {
	if c := b.cgroups[id]; c != nil {
		return c.path, c.container
	}
	return "", ""
}

// Now is the builder's clock: the latest timestamp of its inputs.
func (b *Builder) Now() uint64 { return b.now }

// Current is the state a record is in now and when it entered it: the
// last span's state (TIME_WAIT after a close into it), or CLOSE. since is
// 0 when the entry is unknown: a connection first seen in that state
// (found midway, or known from the snapshot at start) was in it for an
// unknown time before.
func (r *Record) Current() (state probe.State, since uint64) {
	state = r.State
	// Closed into TIME_WAIT: seen closing (End), or seeded from a
	// time-wait socket (its close unknown).
	if r.State == probe.StateClose && r.TimeWait == TWPending {
		state = probe.StateTimeWait
	}
	if n := r.NSpan; n > 0 && r.Spans[n-1].State == state {
		return state, r.Spans[n-1].Enter
	}
	return state, 0
}

// FirstSeen is when tcpfsm first knew of the connection: its first event,
// or the snapshot that found it. For a partial record, its start was
// earlier.
func (r *Record) FirstSeen() uint64 { return r.Start }

// StateAge is how long the record has been in its current state at now
// (ns), and whether that is exact. When the entry is unknown it is a
// lower bound: the time since a dump found it in that state (a seed, a
// reconciliation's correction), or since it was first seen.
func (r *Record) StateAge(now uint64) (age uint64, exact bool) {
	_, since := r.Current()
	if since != 0 {
		return sub(now, since), true
	}
	if r.foundAt != 0 {
		return sub(now, r.foundAt), false
	}
	return sub(now, r.Start), false
}

// Age is the connection's lifetime so far at now (ns), and whether that
// is exact; for a partial record it is a lower bound, the time since it
// was first seen.
func (r *Record) Age(now uint64) (age uint64, exact bool) {
	end := now
	switch {
	case r.End != 0:
		end = r.End
	case r.TimeWait != TWNone:
		// Seeded in TIME_WAIT: it closed before it was found.
		end = r.Start
	}
	return sub(end, r.Start), r.Anomalies&AnomalyPartial == 0 && !r.Seeded
}

func sub(a, b uint64) uint64 {
	if b == 0 || a < b {
		return 0
	}
	return a - b
}
