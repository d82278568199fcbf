package lifecycle

import "unsafe"

// What a record needs from its close on (its reset hold, its orphan's
// FIN_WAIT2, its TIME_WAIT, its spans past the slot's, its cgroup's
// names), 104 B an open connection does not use: kept in a side table (sidetable.go),
// taken at the first write (closingOf) and let go with the record.

type closing struct {
	TimeWaitExit uint64
	heldUntil    uint64
	twSeen       uint64 // sock_diag: last dump that listed it
	twExpected   uint64 // ... its timer's end
	// orphans in FIN_WAIT2 (orphan.go): orphanAt the full socket's CLOSE
	// (0: none), finAt the peer's FIN learnt during the hold.
	orphanAt, finAt uint64
	// the entries of spans past a slot's inlineSpans (slot.go): the
	// states from FIN_WAIT2 or LAST_ACK on, or more corrections than a
	// connection has states
	enter    [MaxSpans - inlineSpans]uint64
	lastExit uint64      // the last span's exit (slot.go)
	cg       *cgroupInfo // the cgroup's path and container, once annotated
}

type closingTable = sideTable[closing]

const closingChunkBytes = sideChunkLen * int(unsafe.Sizeof(closing{}))

// cl is slot c's closing entry, or noClosing when it has none: to read
// only (a test checks noClosing stays zero).
func (b *Builder) cl(c *slot) *closing {
	if c.cl == 0 {
		return &noClosing
	}
	return b.closings.at(c.cl)
}

var noClosing closing

// closingOf is slot c's closing entry, taken now if it has none: to write.
func (b *Builder) closingOf(c *slot) *closing {
	if c.cl == 0 {
		c.cl = b.closings.take()
	}
	return b.closings.at(c.cl)
}
