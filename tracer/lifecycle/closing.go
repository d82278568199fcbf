package lifecycle

import "unsafe"

// What a record needs from its close on (its reset hold, its orphan's
// FIN_WAIT2, its TIME_WAIT, the entries of its last spans), 88 B an open
// connection does not use: kept in a table of its own, taken at the
// first write (closingOf) and let go with the record. Its entries live in chunks, so a pointer to one stays
// valid while others are taken.

type closing struct {
	TimeWaitEnter, TimeWaitExit uint64
	heldUntil                   uint64
	twSeen                      uint64 // sock_diag: last dump that listed it
	twExpected                  uint64 // ... its timer's end
	// orphans in FIN_WAIT2 (orphan.go): orphanAt the full socket's CLOSE
	// (0: none), finAt the peer's FIN learnt during the hold.
	orphanAt, finAt uint64
	// the entries of spans past a slot's inlineSpans (slot.go): the
	// states after FIN_WAIT2 or LAST_ACK, or more corrections than a
	// connection has states
	enter    [MaxSpans - inlineSpans]uint64
	lastExit uint64      // the last span's exit (slot.go)
	cg       *cgroupInfo // the cgroup's path and container, once annotated
}

// The entries live in chunks taken lowest first and dropped as they
// empty (one empty chunk kept), as the records' (table.go): after a
// burst of TIME_WAIT the memory goes back while others stay.
const closingChunk = 256

type closingTable struct {
	chunks  []closingChunkOf
	lowFree int // the lowest chunk that may have room
	spare   int // the empty chunk kept, -1: none (the zero table: 0 is none too, see take)
	used    int
	dropped uint64 // chunks dropped, for Released
}

const closingChunkBytes = closingChunk * int(unsafe.Sizeof(closing{}))

type closingChunkOf struct {
	e    *[closingChunk]closing // nil: dropped
	free []uint16               // offsets not taken
}

// cl is slot c's closing entry, zero when it has none: to read.
func (b *Builder) cl(c *slot) closing {
	if c.cl == 0 {
		return closing{}
	}
	return *b.closings.at(c.cl)
}

// closingOf is slot c's closing entry, taken now if it has none: to write.
func (b *Builder) closingOf(c *slot) *closing {
	if c.cl == 0 {
		c.cl = b.closings.take()
	}
	return b.closings.at(c.cl)
}

func (t *closingTable) at(j int32) *closing { return &t.chunks[j/closingChunk].e[j%closingChunk] }

// take takes an entry, never entry 0 (none).
func (t *closingTable) take() int32 {
	if len(t.chunks) == 0 {
		t.spare = -1
	}
	for ; t.lowFree < len(t.chunks); t.lowFree++ {
		c := &t.chunks[t.lowFree]
		if c.e == nil {
			c.e = new([closingChunk]closing)
			for k := closingChunk - 1; k >= 0; k-- {
				if t.lowFree > 0 || k > 0 {
					c.free = append(c.free, uint16(k))
				}
			}
		}
		if n := len(c.free); n > 0 {
			if t.spare == t.lowFree {
				t.spare = -1
			}
			off := c.free[n-1]
			c.free = c.free[:n-1]
			t.used++
			return int32(t.lowFree*closingChunk + int(off))
		}
	}
	t.chunks = append(t.chunks, closingChunkOf{})
	return t.take()
}

// give lets entry j go (0: none); a chunk that empties is the spare if
// it is the lowest empty one, else dropped.
func (t *closingTable) give(j int32) {
	if j == 0 {
		return
	}
	ci := int(j / closingChunk)
	c := &t.chunks[ci]
	c.e[j%closingChunk] = closing{}
	c.free = append(c.free, uint16(j%closingChunk))
	t.used--
	t.lowFree = min(t.lowFree, ci)
	room := closingChunk
	if ci == 0 {
		room-- // entry 0
	}
	if len(c.free) < room {
		return
	}
	drop := ci
	switch {
	case t.spare < 0:
		t.spare = ci
		return
	case ci < t.spare:
		drop, t.spare = t.spare, ci
	}
	t.chunks[drop] = closingChunkOf{}
	t.dropped++
	for len(t.chunks) > 0 && t.chunks[len(t.chunks)-1].e == nil {
		t.chunks = t.chunks[:len(t.chunks)-1]
	}
	t.lowFree = min(t.lowFree, len(t.chunks))
}
