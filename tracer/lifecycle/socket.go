package lifecycle

import "github.com/tcpfsm/tcpfsm/tracer/probe"

// Purpose says why a sock_diag dump was made.
type Purpose uint8

const (
	// PurposeSnapshot: every TCP socket at start, to seed partial records
	// for connections that already existed.
	PurposeSnapshot Purpose = 1
	// PurposeTimeWait: the time-wait sockets of a namespace, to see when
	// reconstructed TIME_WAITs end.
	PurposeTimeWait Purpose = 2
)

// Valid reports whether p is a purpose this package defines.
func (p Purpose) Valid() bool { return p == PurposeSnapshot || p == PurposeTimeWait }

// Socket is one socket a sock_diag dump listed, with its owner when the
// tracer could find it. It is a builder input; tracer/record encodes it.
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
	k := s.key()
	switch {
	case s.Purpose == PurposeSnapshot && !s.TimeWait:
		if s.State == probe.StateListen {
			b.listening[listenKey{s.NetNS, s.Lport}] = true
		}
		if len(b.seeds) < b.cfg.MaxTracked {
			b.seeds[k] = seed{state: s.State, pid: s.Pid, comm: s.Comm, cgroupID: s.CgroupID, hasOwner: s.Pid != 0}
		}
	case s.TimeWait:
		end := s.Time + uint64(s.ExpiresMs)*1_000_000
		if i, ok := b.timeWait[k]; ok {
			r := &b.slab[i]
			r.twSeen = s.Time
			r.twExpected = end
			r.twFinWait2 = s.State == probe.StateFinWait2
			return
		}
		// A time-wait socket tcpfsm did not see enter: from before the
		// start, or from a filtered connection; counted in the gauge.
		if s.Purpose == PurposeSnapshot {
			b.preTW[k] = end
		} else if _, ok := b.preTW[k]; ok {
			b.preTW[k] = end
		}
	}
}

// DumpDone marks a complete dump of a namespace: for a time-wait dump,
// records it no longer lists have left TIME_WAIT.
func (b *Builder) DumpDone(netns uint32, purpose Purpose, time uint64) {
	b.advance(time)
	if purpose != PurposeTimeWait {
		return
	}
	b.twPolled[netns] = time
	for _, i := range b.inOrder(b.timeWaitList()) {
		r := &b.slab[i]
		if r.NetNS != netns || r.twSeen == time || r.TimeWaitEnter+dumpMargin > time {
			continue
		}
		// Gone: at its timer's end if that has passed, else killed early
		// (reused by a new connection, or reset) before this dump.
		end := time
		if r.twExpected != 0 && r.twExpected <= time {
			end = r.twExpected
		}
		b.finishTimeWait(i, end, TWSockDiag)
	}
	for k := range b.preTW {
		if k.netns == netns && b.preTW[k] < time {
			delete(b.preTW, k)
		}
	}
}

// A record entering TIME_WAIT this close to a dump may not be in it yet.
const dumpMargin = 100_000_000
