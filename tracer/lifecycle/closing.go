package lifecycle

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
	enter [MaxSpans - inlineSpans]uint64
}

const closingChunk = 256

type closingTable struct {
	chunks []*[closingChunk]closing
	free   []int32 // entries not taken; entry 0 is never taken
	used   int
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

func (t *closingTable) at(j int32) *closing { return &t.chunks[j/closingChunk][j%closingChunk] }

func (t *closingTable) take() int32 {
	if len(t.free) == 0 {
		n := int32(len(t.chunks)) * closingChunk
		t.chunks = append(t.chunks, new([closingChunk]closing))
		for j := n + closingChunk - 1; j >= n; j-- {
			if j != 0 {
				t.free = append(t.free, j)
			}
		}
	}
	j := t.free[len(t.free)-1]
	t.free = t.free[:len(t.free)-1]
	t.used++
	return j
}

// give lets entry j go (0: none).
func (t *closingTable) give(j int32) {
	if j == 0 {
		return
	}
	*t.at(j) = closing{}
	t.free = append(t.free, j)
	t.used--
}

// shrink lets the table go once no record holds an entry.
func (t *closingTable) shrink() {
	if t.used == 0 && len(t.chunks) > 1 {
		*t = closingTable{}
	}
}
