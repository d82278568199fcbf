package lifecycle

import (
	"cmp"
	"slices"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// The table of records: a slab indexed by int32, its free list, the
// connection id index, the LRU of open records, the per-state gauge, and
// the bounds (the MaxTracked cap and stuck handshakes) that evict.

// tupleKey identifies a connection by its endpoints.
type tupleKey struct {
	netns        uint32
	family       uint8
	laddr, raddr [16]byte
	lport, rport uint16
}

func eventKey(e *probe.Event) tupleKey {
	return tupleKey{e.Netns, e.Family, e.Saddr, e.Daddr, e.Sport, e.Dport}
}

func recordKey(r *Record) tupleKey {
	return tupleKey{r.NetNS, r.Family, r.Laddr, r.Raddr, r.Lport, r.Rport}
}

func (b *Builder) alloc() int32 {
	if n := len(b.free); n > 0 {
		i := b.free[n-1]
		b.free = b.free[:n-1]
		b.slab[i] = Record{}
		return i
	}
	b.slab = append(b.slab, Record{})
	return int32(len(b.slab) - 1)
}

func (b *Builder) release(i int32) {
	r := &b.slab[i]
	delete(b.byID, r.ID)
	if r.unjoined {
		r.unjoined = false
		b.unjoinedN--
	}
	if r.alias != 0 && b.byID[r.alias] == i {
		delete(b.byID, r.alias)
	}
	b.unindex(i)
	b.dropOrphan(i)
	if k := recordKey(r); r.Role == RolePassive && b.passive[k] == i {
		delete(b.passive, k)
	}
	b.free = append(b.free, i)
}

// LRU of open records.
func (b *Builder) lruPush(i int32) {
	r := &b.slab[i]
	r.prev, r.next = -1, b.head
	if b.head >= 0 {
		b.slab[b.head].prev = i
	}
	b.head = i
	if b.tail < 0 {
		b.tail = i
	}
	b.open++
}

func (b *Builder) lruRemove(i int32) {
	r := &b.slab[i]
	if r.prev >= 0 {
		b.slab[r.prev].next = r.next
	} else {
		b.head = r.next
	}
	if r.next >= 0 {
		b.slab[r.next].prev = r.prev
	} else {
		b.tail = r.prev
	}
	r.prev, r.next = -1, -1
	b.open--
}

func (b *Builder) touch(i int32) {
	if b.head != i {
		b.lruRemove(i)
		b.lruPush(i)
	}
}

// count and uncount keep the per-state gauge and the handshake set.
func (b *Builder) count(i int32, r *Record) {
	r.counted = true
	b.states[r.State]++
	if r.State == probe.StateSynSent || r.State == probe.StateSynRecv {
		b.handshake[i] = struct{}{}
	}
}

func (b *Builder) uncount(i int32, r *Record) {
	if !r.counted {
		return
	}
	r.counted = false
	b.states[r.State]--
	delete(b.handshake, i)
}

// evictStuckHandshakes evicts the records whose handshake outlasted
// HandshakeTimeout: its end was missed.
func (b *Builder) evictStuckHandshakes(now uint64) {
	for _, i := range b.inOrder(b.handshakeList()) {
		r := &b.slab[i]
		since := r.Start
		if r.NSpan > 0 && r.Spans[r.NSpan-1].Enter != 0 {
			since = r.Spans[r.NSpan-1].Enter
		}
		if now > since+uint64(b.cfg.HandshakeTimeout) {
			b.evict(i, EvictHandshakeTimeout)
		}
	}
}

// evictOldest makes room: the least recently active open record goes.
func (b *Builder) evictOldest() {
	if b.tail >= 0 {
		b.evict(b.tail, EvictCap)
		return
	}
	// Only TIME_WAIT records: end the oldest by assumption.
	if tw := b.inOrder(b.timeWaitList()); len(tw) > 0 {
		oldest := tw[0]
		b.stats.Evictions[EvictCap]++
		r := &b.slab[oldest]
		b.finishTimeWait(oldest, twDue(r), TWAssumed)
	}
}

func (b *Builder) evict(i int32, reason int) {
	b.stats.Evictions[reason]++
	r := &b.slab[i]
	b.lruRemove(i)
	b.unindex(i)
	b.uncount(i, r)
	r.Kind = KindEvicted
	b.annotate(r)
	b.unverified(r)
	b.finish(i)
}

// Records leave in an order that depends on the inputs only, never on map
// iteration, so a replay hands them out as the live run did.

func (b *Builder) timeWaitList() []int32 {
	b.scratch = b.scratch[:0]
	for _, i := range b.timeWait {
		b.scratch = append(b.scratch, i)
	}
	return b.scratch
}

func (b *Builder) handshakeList() []int32 {
	b.scratch = b.scratch[:0]
	for i := range b.handshake {
		b.scratch = append(b.scratch, i)
	}
	return b.scratch
}

// pick lists, in order, the records of m that keep selects: a sweep
// sorts only the records it acts on, not all it looks at (60000 records
// in TIME_WAIT take ~100 ms to sort, their slots out of cache).
func (b *Builder) pick(m map[tupleKey]int32, keep func(r *Record) bool) []int32 {
	b.scratch = b.scratch[:0]
	for _, i := range m {
		if keep(&b.slab[i]) {
			b.scratch = append(b.scratch, i)
		}
	}
	return b.inOrder(b.scratch)
}

// inOrder sorts records by when they last changed state, then by id.
func (b *Builder) inOrder(idx []int32) []int32 {
	at := func(i int32) uint64 {
		r := &b.slab[i]
		if r.TimeWaitEnter != 0 {
			return r.TimeWaitEnter
		}
		if r.NSpan > 0 {
			return r.Spans[r.NSpan-1].Enter
		}
		return r.Start
	}
	slices.SortFunc(idx, func(x, y int32) int {
		if c := cmp.Compare(at(x), at(y)); c != 0 {
			return c
		}
		return cmp.Compare(b.slab[x].ID, b.slab[y].ID)
	})
	// The loops that use the list may change the maps: work on a copy.
	return append(b.order[:0], idx...)
}
