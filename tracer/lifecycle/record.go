// Package lifecycle turns tcpfsm's events into one record per connection:
// who owned it, how its handshake went, how long it spent in each state,
// who closed it and how, what it moved, and its TIME_WAIT, which the
// kernel's tracepoint never shows and this package reconstructs.
//
// The Builder is a deterministic state machine fed with inputs (events,
// sock_diag observations, cgroup paths and clock ticks) and nothing else:
// the same inputs, live or replayed from a recording, give the same records.
package lifecycle

import (
	"fmt"
	"net/netip"

	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Role is how the connection was opened.
type Role uint8

const (
	RoleUnknown  Role = iota
	RoleActive        // connect()
	RolePassive       // accepted by a listener
	RoleListener      // a listening socket
)

var roleNames = [...]string{"unknown", "active", "passive", "listener"}

func (r Role) String() string {
	if int(r) < len(roleNames) {
		return roleNames[r]
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Initiator is who started the close: who sent the first FIN, or the RST.
type Initiator uint8

const (
	InitiatorUnknown Initiator = iota
	InitiatorLocal
	InitiatorRemote
	InitiatorBoth // simultaneous close: both FINs crossed
)

var initiatorNames = [...]string{"unknown", "local", "remote", "both"}

func (i Initiator) String() string {
	if int(i) < len(initiatorNames) {
		return initiatorNames[i]
	}
	return fmt.Sprintf("initiator(%d)", uint8(i))
}

// Kind is how the connection ended.
type Kind uint8

const (
	KindOpen             Kind = iota // still open when the record was emitted (tracer stopped)
	KindGraceful                     // FINs both ways
	KindSimultaneous                 // FINs crossed (CLOSING)
	KindResetSent                    // this end sent a RST
	KindResetReceived                // the peer sent a RST
	KindRefused                      // connect() answered by a RST
	KindConnectTimeout               // connect() gave up on SYN retransmits
	KindTimeout                      // an established connection timed out (retransmits, keepalive)
	KindAbortedHandshake             // closed before ESTABLISHED for another reason
	KindEvicted                      // dropped by the tracker (cap or stuck handshake)
	KindListenerClosed               // a listener stopped listening
	// KindUnobserved: a reconciliation found the socket gone from the
	// kernel without its close having been seen (events were lost): it
	// ended between its last event and that dump (End: the dump's time).
	KindUnobserved
	// KindFinWait2Timeout: closed by its owner, the peer never sent its
	// FIN; the kernel gave up after tcp_fin_timeout in FIN_WAIT2.
	KindFinWait2Timeout
	// KindFinWait2Aborted: likewise without the peer's FIN, but gone
	// before tcp_fin_timeout: a RST one way or the other, most often the
	// answer to data the peer sent after our close.
	KindFinWait2Aborted
)

var kindNames = [...]string{"open", "graceful", "simultaneous", "reset_sent", "reset_received", "refused",
	"connect_timeout", "timeout", "aborted_before_established", "evicted", "listener_closed", "unobserved",
	"fin_wait2_timeout", "fin_wait2_aborted"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// TimeWaitEnd says how the end of TIME_WAIT is known.
type TimeWaitEnd uint8

const (
	TWNone     TimeWaitEnd = iota // the connection did not go through TIME_WAIT
	TWPending                     // in TIME_WAIT when the record was emitted
	TWExact                       // seen by fentry on inet_twsk_kill
	TWSockDiag                    // from sock_diag: the timer's expiry, or the dump it vanished from
	TWAssumed                     // not observable (netns out of reach): entry + 60 s
	TWReused                      // a new connection with the same endpoints took it over
)

var twEndNames = [...]string{"none", "pending", "exact", "sock_diag", "assumed", "reused"}

func (t TimeWaitEnd) String() string {
	if int(t) < len(twEndNames) {
		return twEndNames[t]
	}
	return fmt.Sprintf("tw(%d)", uint8(t))
}

// TimeWaitLen is the kernel's fixed TIME_WAIT duration (TCP_TIMEWAIT_LEN).
const TimeWaitLen = 60_000_000_000

// Anomaly flags on a record.
type Anomaly uint16

const (
	// AnomalyPartial: the first event was not the connection's start.
	AnomalyPartial Anomaly = 1 << iota
	// AnomalyInvalidTransition: a transition RFC 9293's diagram does not allow.
	AnomalyInvalidTransition
	// AnomalyStateMismatch: an event's old state was not the state the
	// record was in: events were missed.
	AnomalyStateMismatch
	// AnomalyEventsLost: this record missed some of the events the tracer
	// lost (a gap, a midway start after a loss, a repair by
	// reconciliation, or open at the end through an unchecked loss).
	AnomalyEventsLost
)

var anomalyNames = [...]string{"partial", "invalid_transition", "state_mismatch", "events_lost"}

// AnomalyName returns the name of one anomaly bit.
func AnomalyName(a Anomaly) string {
	for i, n := range anomalyNames {
		if a == 1<<i {
			return n
		}
	}
	return fmt.Sprintf("anomaly(%#x)", uint16(a))
}

// Anomalies lists the names of the set bits, for the caller's buffer.
func (a Anomaly) Names(dst []string) []string {
	for i, n := range anomalyNames {
		if a&(1<<i) != 0 {
			dst = append(dst, n)
		}
	}
	return dst
}

// MaxSpans is how many state spans a record keeps; a TCP connection
// passes through at most seven states, TIME_WAIT included.
const MaxSpans = 8

// Span is a stay in one state.
type Span struct {
	State probe.State
	// Enter is when the state was entered (monotonic ns); Exit when it was
	// left, 0 while still in it.
	Enter, Exit uint64
}

// Dwell is the span's length in ns, 0 while open or when its entry is
// unknown (Enter 0: a state the connection was found in).
func (s *Span) Dwell() uint64 {
	if s.Enter == 0 || s.Exit == 0 || s.Exit < s.Enter {
		return 0
	}
	return s.Exit - s.Enter
}

// Record is one connection's whole story. Times are CLOCK_MONOTONIC ns,
// as the kernel stamps events; durations are ns.
type Record struct {
	// The fields down to endKind are the builder's slot (slot.go: its
	// core, in this order), ordered by size so that the slot, most of the
	// memory per connection, has no padding: 8-byte fields, the
	// addresses, 4-, 2- and 1-byte fields.

	ID uint64

	Start       uint64 // first event
	End         uint64 // the transition to CLOSE; 0 while open
	HandshakeNs uint64 // SYN_SENT (or SYN_RECV) to ESTABLISHED

	TxBytes, RxBytes uint64 // payload, without SYN and FIN

	TimeWaitEnter uint64 // in the slot: the TIME_WAIT sweep reads it for every record in TIME_WAIT

	// what the builder needs while the record is open
	lastEv    uint64 // time of its last event
	reconSeen uint64 // start of the last reconciliation dump that listed it

	Laddr [16]byte
	Raddr [16]byte
	NetNS uint32

	HandshakeRTTUs uint32 // the kernel's first RTT sample, at ESTABLISHED
	SynRetransmits uint32

	SrttUs          uint32
	Retransmits     uint32
	SegsIn, SegsOut uint32

	prev, next int32 // LRU, slab indices

	Lport     uint16
	Rport     uint16
	SkErr     uint16 // socket error at CLOSE (errno)
	Anomalies Anomaly
	flags     flags // what it went through, and the builder's marks (slot.go)

	Role   Role
	Family uint8
	NSpan  uint8       // Spans used
	State  probe.State // the state now: CLOSE once closed
	Owner  probe.OwnerSource

	Initiator Initiator
	Kind      Kind
	TimeWait  TimeWaitEnd
	// Seeded: the record was opened from a sock_diag dump (the snapshot
	// at start, or a reconciliation), not by an event: its Start is when
	// the dump found it, its first state's entry is unknown.
	Seeded bool
	// endKind: the close an orphan in FIN_WAIT2 (orphan.go) ended with.
	endKind Kind

	// The fields above are the slot's core; those below the builder
	// keeps in a form of its own while it holds the record, and fills
	// where it hands one out.

	TimeWaitExit uint64
	// what few records need (rare.go)
	alias       uint64 // a seeded record's kernel connection id, once joined
	foundAt     uint64 // when a dump found it in its state (entry unknown)
	lostAtStart uint64
	// what the builder needs once it closed (closing.go)
	heldUntil       uint64
	twSeen          uint64 // sock_diag: last dump that listed it
	twExpected      uint64 // ... its timer's end
	orphanAt, finAt uint64 // orphans in FIN_WAIT2 (orphan.go)

	// The owner: its process, comm and cgroup.
	Pid      uint32
	Comm     [16]byte
	CgroupID uint64

	Spans     [MaxSpans]Span
	Cgroup    string // cgroup v2 path, when known
	Container string // runtime:id, when the cgroup path names one
	// Emitted is the builder's clock when the record was handed out, so
	// readers of a record still open can tell how long it has been in
	// its state (0 until then).
	Emitted uint64

	// Meta names the owner's container, Peer the pod at the other end
	// (tracer/metadata), when the container runtime told them. The
	// builder never sets them: the session attaches them where a record
	// is handed out (tracer/session's metadata stage), never on the
	// per-event path. They point to values shared between records and
	// never changed; nil when unknown.
	Meta, Peer *metadata.Meta
}

// LocalAddr and RemoteAddr return the endpoints' addresses.
func (r *Record) LocalAddr() netip.Addr  { return probe.Addr(r.Family, &r.Laddr) }
func (r *Record) RemoteAddr() netip.Addr { return probe.Addr(r.Family, &r.Raddr) }

// CommBytes is the owner's comm without padding.
func (r *Record) CommBytes() []byte { return probe.TrimComm(&r.Comm) }

// OwnerKnown reports whether Pid and Comm name the owner.
func (r *Record) OwnerKnown() bool { return r.Owner != probe.OwnerUnknown }

// LifetimeNs is first event to CLOSE (TIME_WAIT not included); for a
// partial record, a lower bound (LifetimeKnown says which).
func (r *Record) LifetimeNs() uint64 {
	if r.End == 0 || r.End < r.Start {
		return 0
	}
	return r.End - r.Start
}

// LifetimeKnown reports whether LifetimeNs is the whole lifetime: the
// record saw the connection start.
func (r *Record) LifetimeKnown() bool { return r.Anomalies&AnomalyPartial == 0 && !r.Seeded }

// EstablishedKnown reports whether EstablishedNs is the whole time in
// ESTABLISHED: no span of ESTABLISHED or a state after it (FIN_WAIT1 to
// TIME_WAIT: found there by a dump, or midway) began at an unknown time,
// for then some time in ESTABLISHED went unseen.
func (r *Record) EstablishedKnown() bool {
	for i := 0; i < int(r.NSpan); i++ {
		if sp := &r.Spans[i]; sp.Enter == 0 && (synchronized(sp.State) || sp.State == probe.StateTimeWait) {
			return false
		}
	}
	return true
}

// TimeWaitNs is the TIME_WAIT duration when its entry and end are known
// (a record seeded in TIME_WAIT has no entry: TimeWaitAtLeastNs).
func (r *Record) TimeWaitNs() uint64 {
	if r.TimeWaitEnter == 0 || r.TimeWaitExit == 0 || r.TimeWaitExit < r.TimeWaitEnter {
		return 0
	}
	return r.TimeWaitExit - r.TimeWaitEnter
}

// TimeWaitAtLeastNs is, for a record seeded in TIME_WAIT (TimeWaitEnter
// unknown), a lower bound of its TIME_WAIT: from when a dump found it to
// its end; 0 until it ended.
func (r *Record) TimeWaitAtLeastNs() uint64 {
	if r.TimeWaitEnter != 0 || r.TimeWaitExit == 0 || r.TimeWaitExit < r.Start {
		return 0
	}
	return r.TimeWaitExit - r.Start
}

// EstablishedNs is the time spent in ESTABLISHED.
func (r *Record) EstablishedNs() uint64 {
	var d uint64
	for i := 0; i < int(r.NSpan); i++ {
		if r.Spans[i].State == probe.StateEstablished {
			d += r.Spans[i].Dwell()
		}
	}
	return d
}

// SpanList returns the used spans.
func (r *Record) SpanList() []Span { return r.Spans[:r.NSpan] }
