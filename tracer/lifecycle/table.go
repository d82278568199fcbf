package lifecycle

import (
	"cmp"
	"slices"
	"unsafe"

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

// key64 is a 64-bit key (a connection id, a tuple's hash) as two 32-bit
// halves, the key of the two maps that hold an entry per open connection
// (byID, byTuple). Aligned to 4 bytes, a key64 and its int32 make a
// 12-byte map slot where a uint64 and an int32 make 16 (padded to the
// key's alignment), a group of eight 104 B where it was 136: about 6 B
// less per connection in each map (BenchmarkTrackedMemory). The compiler
// still takes the maps' 8-byte fast paths for it.
type key64 [2]uint32

func k64(v uint64) key64 { return key64{uint32(v), uint32(v >> 32)} }

func eventKey(e *probe.Event) tupleKey {
	return tupleKey{e.Netns, e.Family, e.Saddr, e.Daddr, e.Sport, e.Dport}
}

func recordKey(r *slot) tupleKey {
	return tupleKey{r.NetNS, r.Family, r.Laddr, r.Raddr, r.Lport, r.Rport}
}

// The records live in chunks of chunkLen, allocated when needed and
// dropped when they empty: a record never moves (indices stay valid), the
// table never copies itself to grow (a growing slice held the old array
// and the new one at once, and its slack), and after a mass close the
// memory goes back (a slice never shrank). alloc takes the lowest chunk
// with room, so the records pack into the first chunks and the last ones
// empty. The lowest empty chunk is kept as a spare, so churn around a
// chunk's edge does not allocate a chunk per connection (keeping a higher
// one would: the lower chunk, dropped, would be refilled by the next
// connection and dropped again at its close). A chunk of 1024 slots is a
// whole number of the runtime's 8 KiB pages for any slot whose size is a
// multiple of 8 B (208 B: 26 pages); 512 slots of 216 B left half a page
// unused, 8 B a slot.
const (
	chunkShift = 10
	chunkLen   = 1 << chunkShift
	chunkMask  = chunkLen - 1
)

type chunk struct {
	recs  *[chunkLen]slot // nil: dropped, or never used
	taken int32           // slots in use
	// the free slots: those from fresh on were never taken, the others
	// are chained from freed (-1: none) through their next field, so a
	// chunk needs no free list of its own (2 B a slot)
	fresh, freed int32
}

// chunkBytes is the memory of one chunk of records.
const chunkBytes = chunkLen * int(unsafe.Sizeof(slot{}))

// rec is record i.
func (b *Builder) rec(i int32) *slot { return &b.chunks[i>>chunkShift].recs[i&chunkMask] }

func (b *Builder) alloc() int32 {
	for ; b.lowFree < len(b.chunks); b.lowFree++ {
		c := &b.chunks[b.lowFree]
		if c.recs == nil {
			fillChunk(c)
		}
		if c.taken < chunkLen {
			if b.spare == b.lowFree {
				b.spare = -1
			}
			off := c.freed
			if off >= 0 {
				c.freed = c.recs[off].next
			} else {
				off = c.fresh
				c.fresh++
			}
			c.recs[off] = slot{}
			c.taken++
			b.live++
			return int32(b.lowFree<<chunkShift | int(off))
		}
	}
	b.chunks = append(b.chunks, chunk{})
	return b.alloc()
}

// fillChunk gives a chunk its records, all free: the last freed is
// taken first, then the lowest never taken.
func fillChunk(c *chunk) {
	c.recs = new([chunkLen]slot)
	c.fresh, c.freed = 0, -1
}

// freeRec returns record i's slot to its chunk; a chunk that empties is
// the spare if it is the lowest empty one, else dropped.
func (b *Builder) freeRec(i int32) {
	ci := int(i >> chunkShift)
	c := &b.chunks[ci]
	off := i & chunkMask
	c.recs[off].next, c.freed = c.freed, off
	c.taken--
	b.live--
	b.lowFree = min(b.lowFree, ci)
	if c.taken > 0 {
		return
	}
	drop := ci
	switch {
	case b.spare < 0:
		b.spare = ci
		return
	case ci < b.spare:
		drop, b.spare = b.spare, ci
	}
	b.chunks[drop] = chunk{}
	b.dropped++
	for len(b.chunks) > 0 && b.chunks[len(b.chunks)-1].recs == nil {
		b.chunks = b.chunks[:len(b.chunks)-1]
	}
	b.lowFree = min(b.lowFree, len(b.chunks))
}

func (b *Builder) release(i int32) {
	r := b.rec(i)
	delete(b.byID, k64(r.ID))
	if r.is(fUnjoined) {
		r.set(fUnjoined, false)
		b.unjoinedN--
	}
	if alias := b.rr(r).alias; alias != 0 && b.byID[k64(alias)] == i {
		delete(b.byID, k64(alias))
	}
	b.unindex(i)
	b.dropOrphan(i)
	b.dropPassive(recordKey(r), i)
	b.forget(i, r)
	b.freeRec(i)
}

// LRU of open records.
func (b *Builder) lruPush(i int32) {
	r := b.rec(i)
	r.prev, r.next = -1, b.head
	if b.head >= 0 {
		b.rec(b.head).prev = i
	}
	b.head = i
	if b.tail < 0 {
		b.tail = i
	}
	b.open++
}

func (b *Builder) lruRemove(i int32) {
	r := b.rec(i)
	if r.prev >= 0 {
		b.rec(r.prev).next = r.next
	} else {
		b.head = r.next
	}
	if r.next >= 0 {
		b.rec(r.next).prev = r.prev
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
func (b *Builder) count(i int32, r *slot) {
	r.set(fCounted, true)
	b.states[r.State]++
	if r.State == probe.StateSynSent || r.State == probe.StateSynRecv {
		b.handshake[i] = struct{}{}
	}
}

func (b *Builder) uncount(i int32, r *slot) {
	if !r.is(fCounted) {
		return
	}
	r.set(fCounted, false)
	b.states[r.State]--
	delete(b.handshake, i)
}

// evictStuckHandshakes evicts the records whose handshake outlasted
// HandshakeTimeout: its end was missed.
func (b *Builder) evictStuckHandshakes(now uint64) {
	for _, i := range b.inOrder(b.handshakeList()) {
		r := b.rec(i)
		since := r.Start
		if n := r.lastSpan(); n >= 0 && b.enterOf(r, n) != 0 {
			since = b.enterOf(r, n)
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
		r := b.rec(oldest)
		b.finishTimeWait(oldest, b.twDue(r), TWAssumed)
	}
}

func (b *Builder) evict(i int32, reason int) {
	b.stats.Evictions[reason]++
	r := b.rec(i)
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
func (b *Builder) pick(m map[tupleKey]int32, keep func(r *slot) bool) []int32 {
	b.scratch = b.scratch[:0]
	for _, i := range m {
		if keep(b.rec(i)) {
			b.scratch = append(b.scratch, i)
		}
	}
	return b.inOrder(b.scratch)
}

// inOrder sorts records by when they last changed state, then by id.
func (b *Builder) inOrder(idx []int32) []int32 {
	at := func(i int32) uint64 {
		r := b.rec(i)
		if r.TimeWaitEnter != 0 {
			return r.TimeWaitEnter
		}
		if n := r.lastSpan(); n >= 0 {
			return b.enterOf(r, n)
		}
		return r.Start
	}
	slices.SortFunc(idx, func(x, y int32) int {
		if c := cmp.Compare(at(x), at(y)); c != 0 {
			return c
		}
		return cmp.Compare(b.rec(x).ID, b.rec(y).ID)
	})
	// The loops that use the list may change the maps: work on a copy.
	return append(b.order[:0], idx...)
}
