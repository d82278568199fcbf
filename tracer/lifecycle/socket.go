package lifecycle

import "github.com/tcpfsm/tcpfsm/tracer/probe"

// The sock_diag observations: what a dump of a namespace's sockets tells
// the builder. Snapshot dumps seed connections older than the tracer
// (seed.go), time-wait dumps end reconstructed TIME_WAITs (timewait.go).

// Purpose says why a sock_diag dump was made.
type Purpose uint8

const (
	// PurposeSnapshot: every TCP socket at start, to seed partial records
	// for connections that already existed.
	PurposeSnapshot Purpose = 1
	// PurposeTimeWait: the time-wait sockets of a namespace, to see when
	// reconstructed TIME_WAITs end, and when orphans in FIN_WAIT2 get
	// their peer's FIN (the substate TIME_WAIT) or die (orphan.go).
	PurposeTimeWait Purpose = 2
	// PurposeReconcile: every TCP socket of a namespace, to repair the
	// records from the kernel's truth (reconcile.go); its DumpDone ends a
	// complete dump.
	PurposeReconcile Purpose = 3
	// PurposeReconcileBegin and PurposeReconcileAbort are DumpDone's
	// only: a reconciliation dump of the namespace begins, or failed
	// (then nothing is repaired).
	PurposeReconcileBegin Purpose = 4
	PurposeReconcileAbort Purpose = 5
)

// Valid reports whether p is a purpose this package defines.
func (p Purpose) Valid() bool { return p >= PurposeSnapshot && p <= PurposeReconcileAbort }

// Socket is one socket a sock_diag dump listed, with its owner when the
// tracer could find it. It is a builder input; tracer/recording encodes it.
type Socket struct {
	Time      uint64 // CLOCK_MONOTONIC ns when the dump began
	NetNS     uint32
	ExpiresMs uint32 // the socket's timer: for a time-wait socket, its end
	Pid       uint32 // owner, 0 when unknown
	CgroupID  uint64
	Family    uint8
	State     probe.State // for time-wait sockets: their substate
	TimeWait  bool
	Purpose   Purpose
	Lport     uint16
	Rport     uint16
	Laddr     [16]byte
	Raddr     [16]byte
	Comm      [16]byte
}

func (s *Socket) key() tupleKey {
	return tupleKey{s.NetNS, s.Family, s.Laddr, s.Raddr, s.Lport, s.Rport}
}

// Observe feeds one socket of a dump. A dump's sockets come between its
// start and its DumpDone.
func (b *Builder) Observe(s *Socket) {
	b.advance(s.Time)
	switch {
	case s.Purpose == PurposeReconcile:
		b.observeReconcile(s)
	case s.Purpose == PurposeSnapshot && !s.TimeWait:
		b.observeSnapshot(s)
	case s.TimeWait:
		b.observeTimeWait(s)
	}
}

// DumpDone marks a complete dump of a namespace: for a time-wait dump,
// records it no longer lists have left TIME_WAIT.
func (b *Builder) DumpDone(netns uint32, purpose Purpose, time uint64) {
	b.advance(time)
	switch purpose {
	case PurposeTimeWait:
		b.timeWaitDumpDone(netns, time)
	case PurposeReconcileBegin:
		b.reconcileBegin(netns, time)
	case PurposeReconcile:
		b.reconcileDone(netns)
	case PurposeReconcileAbort:
		delete(b.recon, netns)
	}
}
