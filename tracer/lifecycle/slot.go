package lifecycle

import (
	"unsafe"

	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// The builder's slot: how it holds a record, open or closing, in its
// table (table.go). A Record is most of the memory per connection, and
// some of it is only wanted where a record is handed out: the spans, 24 B
// each where 17 hold them (their states apart), the cgroup path and
// container (two strings: the slot points to the builder's entry for the
// cgroup instead), and Emitted. A Record is filled from its slot where
// the builder hands one out (record).

// core is a Record's first fields, the same in the same order (a test
// checks): a slot's core is copied into a Record's at once.
type core struct {
	ID       uint64
	Role     Role
	Family   uint8
	Laddr    [16]byte
	Raddr    [16]byte
	Lport    uint16
	Rport    uint16
	NetNS    uint32
	Pid      uint32
	Comm     [16]byte
	CgroupID uint64

	Start uint64
	End   uint64
	NSpan uint8
	State probe.State
	Owner probe.OwnerSource

	HandshakeNs    uint64
	HandshakeRTTUs uint32
	SynRetransmits uint32

	Initiator Initiator
	Kind      Kind
	SkErr     uint16
	TimeWait  TimeWaitEnd
	Seeded    bool
	Anomalies Anomaly

	TxBytes, RxBytes uint64
	SrttUs           uint32
	Retransmits      uint32
	SegsIn, SegsOut  uint32

	TimeWaitEnter uint64
	TimeWaitExit  uint64

	Meta, Peer *metadata.Meta

	lostAtStart     uint64
	heldUntil       uint64
	twSeen          uint64
	twExpected      uint64
	alias           uint64
	lastEv          uint64
	reconSeen       uint64
	foundAt         uint64
	orphanAt, finAt uint64
	prev, next      int32
	tupNext         int32

	sawFinWait1, sawCloseWait, sawClosing, established bool
	resetSent, resetReceived                           bool
	twFinWait2                                         bool
	counted                                            bool
	indexed, unjoined                                  bool
	orphan                                             bool
	endKind                                            Kind
}

type slot struct {
	core
	enter, exit [MaxSpans]uint64
	spanState   [MaxSpans]probe.State
	cg          *cgroupInfo // the cgroup's path and container, once annotated
}

// record fills r from the slot; emitted is r.Emitted.
func (c *slot) record(r *Record, emitted uint64) {
	*(*core)(unsafe.Pointer(r)) = c.core
	for k := range r.Spans {
		r.Spans[k] = c.span(k)
	}
	r.Cgroup, r.Container = "", ""
	if c.cg != nil {
		r.Cgroup, r.Container = c.cg.path, c.cg.container
	}
	r.Emitted = emitted
}

// span is span k; setSpan sets it, setExit its exit.
func (c *slot) span(k int) Span {
	return Span{State: c.spanState[k], Enter: c.enter[k], Exit: c.exit[k]}
}

func (c *slot) setSpan(k int, s Span) {
	c.spanState[k], c.enter[k], c.exit[k] = s.State, s.Enter, s.Exit
}

func (c *slot) setExit(k int, ts uint64) { c.exit[k] = ts }

// lastSpan is the last used span's index, -1 for none.
func (c *slot) lastSpan() int { return int(c.NSpan) - 1 }

// addSpan appends a span when there is room, reports whether there was.
func (c *slot) addSpan(s Span) bool {
	if c.NSpan >= MaxSpans {
		return false
	}
	c.setSpan(int(c.NSpan), s)
	c.NSpan++
	return true
}
