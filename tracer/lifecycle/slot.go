package lifecycle

import (
	"unsafe"

	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// The builder's slot: how it holds a record, open or closing, in its
// table (table.go). The records are most of the memory per connection,
// and some of a Record is only wanted where one is handed out, or is the
// same for many: a slot keeps the spans' entries and states and the last
// span's exit (every other exit is the next span's entry), names its
// owner (owners.go) and its cgroup's names (the builder's entry) by
// reference, and leaves out Emitted. What is rare stays outside it, in
// the builder: the exits of spans that do not follow one another, and
// the Meta and Peer a Closed handler attached. A Record is filled from
// its slot where the builder hands one out (fill).

// core is a Record's first fields, the same in the same order (a test
// checks): a slot's core is copied into a Record's at once.
type core struct {
	ID uint64

	Start       uint64
	End         uint64
	HandshakeNs uint64

	TxBytes, RxBytes uint64

	TimeWaitEnter uint64

	lastEv    uint64
	reconSeen uint64

	Laddr [16]byte
	Raddr [16]byte
	NetNS uint32

	HandshakeRTTUs uint32
	SynRetransmits uint32

	SrttUs          uint32
	Retransmits     uint32
	SegsIn, SegsOut uint32

	prev, next int32

	Lport     uint16
	Rport     uint16
	SkErr     uint16
	Anomalies Anomaly
	flags     flags // what it went through, and the builder's marks (slot.go)

	Role   Role
	Family uint8
	NSpan  uint8
	State  probe.State
	Owner  probe.OwnerSource

	Initiator Initiator
	Kind      Kind
	TimeWait  TimeWaitEnd
	Seeded    bool
	endKind   Kind
}

// inlineSpans is how many spans' entries a slot holds: a connection
// open and established has had two states (SYN_SENT or SYN_RECV,
// ESTABLISHED), three once its peer or its owner closed (CLOSE_WAIT,
// FIN_WAIT1). A fourth (FIN_WAIT2, LAST_ACK) takes the closing entry
// (closing.go) a little before its CLOSE would.
const inlineSpans = 3

type slot struct {
	core
	enter   [inlineSpans]uint64 // the first spans' entries
	tupNext int32               // the next open record with the same endpoints' hash (tupleindex.go)
	own     int32               // the owner (owners.go), 0 for none
	cl      int32               // what it needs once closed (closing.go), 0 for none
	rr      int32               // what few records need (rare.go), 0 for none
	// the spans' states
	spanState [MaxSpans]probe.State
}

// flags are a record's booleans. fApart: the spans' exits are in
// Builder.exits, for a span whose exit is not the next one's entry (a
// reconciliation's correction, more spans than MaxSpans: never in a
// connection's normal life). fAttached: Meta and Peer are in
// Builder.attached.
type flags uint16

const (
	fSawFinWait1 flags = 1 << iota
	fSawCloseWait
	fSawClosing
	fEstablished
	fResetSent
	fResetReceived
	fTwFinWait2
	fCounted  // in the per-state gauge
	fIndexed  // in byTuple
	fUnjoined // seeded and no event yet
	fOrphan   // an orphan in FIN_WAIT2 past its reset hold (orphan.go)
	fApart
	fAttached
	fPassive // the accepted connection registered for its endpoints (tupleindex.go)
)

// slotMarks say where a slot keeps things, not what the record went
// through: they depend on what handlers attached, not on the inputs only.
const slotMarks = fApart | fAttached

func (c *core) is(f flags) bool { return c.flags&f != 0 }

func (c *core) set(f flags, on bool) {
	if on {
		c.flags |= f
	} else {
		c.flags &^= f
	}
}

// fill fills r from slot i; emitted is r.Emitted.
func (b *Builder) fill(i int32, r *Record, emitted uint64) {
	c := b.rec(i)
	*(*core)(unsafe.Pointer(r)) = c.core
	r.flags &^= slotMarks // where the slot keeps things is not the record's
	o := &b.owners[c.own]
	r.Pid, r.Comm, r.CgroupID = o.pid, o.comm, o.cgroupID
	cl := b.cl(c)
	n := int(c.NSpan)
	var enter [MaxSpans]uint64
	copy(enter[:], c.enter[:])
	copy(enter[inlineSpans:], cl.enter[:])
	for k := range n {
		sp := &r.Spans[k]
		sp.State, sp.Enter = c.spanState[k], enter[k]
		switch {
		case k < n-1:
			sp.Exit = enter[k+1]
		default:
			sp.Exit = cl.lastExit
		}
	}
	if c.is(fApart) {
		ex := b.exits[i]
		for k := range n {
			r.Spans[k].Exit = ex[k]
		}
	}
	clear(r.Spans[n:])
	r.Cgroup, r.Container = "", ""
	if cl.cg != nil {
		r.Cgroup, r.Container = cl.cg.path, cl.cg.container
	}
	r.Emitted = emitted
	rr := b.rr(c)
	r.alias, r.foundAt, r.lostAtStart = rr.alias, rr.foundAt, rr.lostAtStart
	r.TimeWaitExit = cl.TimeWaitExit
	r.heldUntil, r.twSeen, r.twExpected, r.orphanAt, r.finAt = cl.heldUntil, cl.twSeen, cl.twExpected, cl.orphanAt, cl.finAt
	r.Meta, r.Peer = nil, nil
	if c.is(fAttached) {
		m := b.attached[i]
		r.Meta, r.Peer = m[0], m[1]
	}
}

// attach keeps what a handler attached to record i's copy r (Meta, Peer).
func (b *Builder) attach(i int32, c *slot, r *Record) {
	switch {
	case r.Meta != nil || r.Peer != nil:
		b.attached[i] = [2]*metadata.Meta{r.Meta, r.Peer}
		c.set(fAttached, true)
	case c.is(fAttached):
		delete(b.attached, i)
		c.set(fAttached, false)
	}
}

// lastSpan is the last used span's index, -1 for none.
func (c *slot) lastSpan() int { return int(c.NSpan) - 1 }

// exitOf is span k's exit.
func (b *Builder) exitOf(i int32, c *slot, k int) uint64 {
	switch {
	case c.is(fApart):
		return b.exits[i][k]
	case k == c.lastSpan():
		return b.cl(c).lastExit
	}
	return b.enterOf(c, k+1)
}

// setExit sets the last span's exit. The last span of an open record is
// one it is still in: its exit, 0, needs no closing entry.
func (b *Builder) setExit(i int32, c *slot, ts uint64) {
	switch {
	case c.is(fApart):
		b.exits[i][c.lastSpan()] = ts
	case ts != 0 || c.cl != 0:
		b.closingOf(c).lastExit = ts
	}
}

// addSpan appends a span when there is room, and reports whether there
// was; the last span's exit stays what it was.
func (b *Builder) addSpan(i int32, c *slot, s Span) bool {
	var prev uint64
	if c.NSpan > 0 {
		prev = b.exitOf(i, c, c.lastSpan())
	}
	return b.addSpanAfter(i, c, s, prev)
}

// addSpanAfter appends a span, the last one's exit prevExit.
func (b *Builder) addSpanAfter(i int32, c *slot, s Span, prevExit uint64) bool {
	n := int(c.NSpan)
	if n >= MaxSpans {
		return false
	}
	if n > 0 && !c.is(fApart) && prevExit != s.Enter {
		b.keepApart(i, c)
	}
	if n > 0 && c.is(fApart) {
		b.exits[i][n-1] = prevExit
	}
	c.NSpan++
	c.spanState[n] = s.State
	b.setEnter(c, n, s.Enter)
	b.setExit(i, c, s.Exit)
	return true
}

// replaceLast puts s in the last span's place.
func (b *Builder) replaceLast(i int32, c *slot, s Span) {
	n := c.lastSpan()
	if n > 0 && !c.is(fApart) && b.enterOf(c, n) != s.Enter {
		b.keepApart(i, c) // span n-1's exit was span n's entry
	}
	c.spanState[n] = s.State
	b.setEnter(c, n, s.Enter)
	b.setExit(i, c, s.Exit)
}

// enterOf is span k's entry; setEnter sets it. A slot holds the first
// inlineSpans, its closing entry the others (closing.go).
func (b *Builder) enterOf(c *slot, k int) uint64 {
	if k < inlineSpans {
		return c.enter[k]
	}
	return b.cl(c).enter[k-inlineSpans]
}

func (b *Builder) setEnter(c *slot, k int, ts uint64) {
	if k < inlineSpans {
		c.enter[k] = ts
		return
	}
	b.closingOf(c).enter[k-inlineSpans] = ts
}

// keepApart moves slot i's exits to Builder.exits.
func (b *Builder) keepApart(i int32, c *slot) {
	var ex [MaxSpans]uint64
	for k := 0; k < int(c.NSpan); k++ {
		ex[k] = b.exitOf(i, c, k)
	}
	b.exits[i] = &ex
	c.set(fApart, true)
}

// forget drops what slot i keeps outside itself.
func (b *Builder) forget(i int32, c *slot) {
	if c.is(fApart) {
		delete(b.exits, i)
	}
	if c.is(fAttached) {
		delete(b.attached, i)
	}
	b.unrefOwner(c.own)
	b.closings.give(c.cl)
	b.rares.give(c.rr)
}
