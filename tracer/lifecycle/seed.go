package lifecycle

import (
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Seeding: a sock_diag dump lists connections tcpfsm has no record of
// (older than the tracer at start, or whose events were lost). Each
// becomes a record at once, partial and seeded, so gauges, views and the
// API count it; its first event joins that record by its endpoints
// instead of opening a new one.
//
// A seeded record's id is its own until an event joins it: SeedIDBit
// set, never a kernel connection id (those count up from the BPF
// program's sequence and would need 2^51 connections to reach the bit).
// Its first event's kernel id then becomes its id, as if that event had
// opened it, and the seed id stays an alias (Lookup finds both). A later
// new kernel id for the same live socket (after the BPF map evicted it)
// is an alias; the record keeps its id.
// What a seed cannot know stays unknown: its first span's Enter is 0
// (entry unknown), and its Start is when the dump found it.

// SeedIDBit marks the ids of seeded records.
const SeedIDBit = 1 << 63

// Reserve makes room for n more records at once, before a snapshot seeds
// them: growing the indexes one record at a time costs several times the
// seeding itself. It changes nothing else.
func (b *Builder) Reserve(n int) {
	n = min(n, b.cfg.MaxTracked-b.records())
	if n <= 0 {
		return
	}
	if len(b.byID) == 0 {
		b.byID = make(map[key64]int32, n)
	}
	if len(b.byTuple) == 0 {
		b.byTuple = make(map[key64]int32, n)
	}
}

type listenKey struct {
	netns uint32
	port  uint16
}

// observeSnapshot seeds a record for a socket of the start snapshot that
// is not a time-wait socket (those are seed_timewait.go's).
func (b *Builder) observeSnapshot(s *Socket) {
	if s.State == probe.StateListen {
		b.listening[listenKey{s.NetNS, s.Lport}] = true
	}
	if b.trackedFor(s) {
		return
	}
	b.seedRecord(s)
}

// Holds reports whether a record holds the endpoints of a socket a dump
// listed: an open one, one in TIME_WAIT, or an orphan. For a
// reconciliation's reader, to find the owners of the sockets it will seed
// only (tracer/session).
func (b *Builder) Holds(s *Socket) bool {
	k := s.key()
	if b.tupleHead(k) >= 0 {
		return true
	}
	if _, ok := b.timeWait[k]; ok {
		return true
	}
	_, ok := b.orphans[k]
	return ok
}

// trackedFor reports whether an open record already holds the socket's
// endpoints, other than a seed of the same dump (listeners sharing a
// port with SO_REUSEPORT list the same endpoints more than once).
func (b *Builder) trackedFor(s *Socket) bool {
	k := s.key()
	for i := b.tupleHead(k); i >= 0; i = b.tupleNext(i, k) {
		r := b.rec(i)
		if !(r.is(fUnjoined) && r.Start == s.Time) {
			return true
		}
	}
	return false
}

// seedRecord opens a record for a socket a dump listed, in the state the
// dump saw, counted in the gauges at once.
// allocSeed takes a record for a socket a dump found (making room under
// MaxTracked first), with its seed id, endpoints and find time: what
// every seed, full socket or time-wait, starts from.
func (b *Builder) allocSeed(s *Socket) (int32, *slot) {
	if b.open >= b.cfg.MaxTracked || b.records() >= b.cfg.MaxTracked {
		b.evictOldest()
	}
	i := b.alloc()
	r := b.rec(i)
	b.seedSeq++
	r.ID = SeedIDBit | b.seedSeq
	r.NetNS, r.Family, r.Laddr, r.Raddr, r.Lport, r.Rport = s.NetNS, s.Family, s.Laddr, s.Raddr, s.Lport, s.Rport
	r.Start = s.Time
	b.rareOf(r).foundAt = s.Time
	b.setLostAtStart(r)
	r.prev, r.next, r.tupNext = -1, -1, -1
	return i, r
}

func (b *Builder) seedRecord(s *Socket) int32 {
	if s.State == probe.StateClose || s.State > probe.MaxState {
		return -1
	}
	i, r := b.allocSeed(s)
	r.Seeded = true
	r.set(fUnjoined, true)
	b.unjoinedN++
	if s.Pid != 0 {
		b.setOwner(r, ownerKey{s.CgroupID, s.Pid, s.Comm})
		r.Owner = probe.OwnerTask
	}
	b.flag(r, AnomalyPartial)
	r.State = s.State
	b.addSpan(i, r, Span{State: s.State}) // entered at an unknown time
	r.set(fEstablished, synchronized(s.State))
	if s.State == probe.StateListen {
		r.Role = RoleListener
	}
	b.byID[k64(r.ID)] = i
	b.lruPush(i)
	b.index(i)
	b.count(i, r)
	b.guessRole(r)
	b.stats.Seeded++
	return i
}

// synchronized reports whether a connection in state s went through
// ESTABLISHED.
func synchronized(s probe.State) bool {
	switch s {
	case probe.StateEstablished, probe.StateFinWait1, probe.StateFinWait2, probe.StateCloseWait,
		probe.StateLastAck, probe.StateClosing:
		return true
	}
	return false
}

// join finds the open record an event with a connection id the builder
// does not know belongs to, by its endpoints: a seeded record's first
// event, or a live socket whose kernel-side state the BPF program's LRU
// map evicted (it then gets a new id). An event that opens a socket's
// life joins nothing; it replaces a seed that has had no event yet (the
// socket was born while the dump ran, and the events know it better).
// It returns the record's index, or false.
func (b *Builder) join(e *probe.Event) (int32, bool) {
	if b.unjoinedN == 0 && OpeningRole(e.OldState(), e.NewState()) != RoleUnknown && !e.Partial() {
		return -1, false // a new socket, and no seed it could replace: no lookup
	}
	k := eventKey(e)
	head := b.tupleHead(k)
	if head < 0 {
		return -1, false
	}
	old := e.OldState()
	if OpeningRole(old, e.NewState()) != RoleUnknown && !e.Partial() {
		if b.unjoinedN == 0 {
			return -1, false
		}
		for i := head; i >= 0; i = b.tupleNext(i, k) {
			if r := b.rec(i); r.is(fUnjoined) && r.Role != RoleListener {
				b.dropSeed(i)
				b.stats.SeedsReplaced++
				break
			}
		}
		return -1, false
	}
	// Listeners may share endpoints: take one no event has joined yet.
	i := head
	for j := head; j >= 0; j = b.tupleNext(j, k) {
		if b.rec(j).is(fUnjoined) {
			i = j
			break
		}
	}
	if r := b.rec(i); !r.is(fUnjoined) {
		b.stats.Rejoined++
	}
	b.adopt(i, e.ConnId)
	return i, true
}

// firstEvent: a seed's first state event says which state the socket
// was in until now; the dump may have listed it just before or after
// this change, so that is no mismatch.
func (b *Builder) firstEvent(i int32, r *slot, old probe.State) {
	r.set(fUnjoined, false)
	b.unjoinedN--
	b.stats.SeededStart++
	if r.State != old && old != probe.StateClose && old <= probe.MaxState && r.NSpan == 1 {
		b.uncount(i, r)
		r.State, r.spanState[0] = old, old
		r.set(fEstablished, r.is(fEstablished) || synchronized(old))
		b.count(i, r)
	}
}

// adopt makes a kernel connection id find record i: a seed takes it as
// its id, as if the event had opened it (its seed id still finds it);
// another record keeps its id and gets this one as an alias.
func (b *Builder) adopt(i int32, id uint64) {
	r := b.rec(i)
	if alias := b.rr(r).alias; r.is(fUnjoined) && alias == 0 {
		b.rareOf(r).alias, r.ID = r.ID, id
	} else if r.ID != id {
		if alias != 0 && alias&SeedIDBit == 0 {
			delete(b.byID, k64(alias))
		}
		b.rareOf(r).alias = id
	}
	b.byID[k64(id)] = i
}

// joinSide finds the open record of a reset or SYN retransmit whose
// connection id the builder does not know, by its endpoints: a seeded
// connection's reset comes before its CLOSE. Its state is the next
// state event's to tell.
func (b *Builder) joinSide(e *probe.Event) (int32, bool) {
	i := b.tupleHead(eventKey(e))
	if i < 0 || b.rec(i).Role == RoleListener {
		return -1, false
	}
	b.adopt(i, e.ConnId)
	return i, true
}

// dropSeed forgets a seeded record no event joined: nothing is handed out.
func (b *Builder) dropSeed(i int32) {
	r := b.rec(i)
	b.lruRemove(i)
	b.uncount(i, r)
	b.stats.Seeded--
	b.release(i)
}

// guessRole: a connection whose local port is a listener's was accepted;
// one that reaches a local listener on the same address was connected.
func (b *Builder) guessRole(r *slot) {
	if r.Role != RoleUnknown {
		return
	}
	switch {
	case b.listening[listenKey{r.NetNS, r.Lport}]:
		r.Role = RolePassive
	case b.listening[listenKey{r.NetNS, r.Rport}] && r.Laddr == r.Raddr:
		r.Role = RoleActive
	}
}
