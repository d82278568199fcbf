package lifecycle

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

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

// Socket is one socket a sock_diag dump listed, with its owner when the
// tracer could find it. It is a builder input, recorded as such.
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

// SocketSize is the encoded size of a Socket.
const SocketSize = 8 + 4*4 + 8 + 4 + 2*2 + 16*3

// AppendSocket encodes s for a recording.
func AppendSocket(b []byte, s *Socket) []byte {
	b = binary.LittleEndian.AppendUint64(b, s.Time)
	b = binary.LittleEndian.AppendUint32(b, s.NetNS)
	b = binary.LittleEndian.AppendUint32(b, s.ExpiresMs)
	b = binary.LittleEndian.AppendUint32(b, s.Pid)
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint64(b, s.CgroupID)
	tw := uint8(0)
	if s.TimeWait {
		tw = 1
	}
	b = append(b, s.Family, uint8(s.State), tw, uint8(s.Purpose))
	b = binary.LittleEndian.AppendUint16(b, s.Lport)
	b = binary.LittleEndian.AppendUint16(b, s.Rport)
	b = append(b, s.Laddr[:]...)
	b = append(b, s.Raddr[:]...)
	return append(b, s.Comm[:]...)
}

// ErrBadSocket is a socket record that does not decode.
var ErrBadSocket = errors.New("malformed socket record")

// DecodeSocket decodes what AppendSocket wrote.
func DecodeSocket(p []byte, s *Socket) error {
	if len(p) != SocketSize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrBadSocket, len(p), SocketSize)
	}
	s.Time = binary.LittleEndian.Uint64(p)
	s.NetNS = binary.LittleEndian.Uint32(p[8:])
	s.ExpiresMs = binary.LittleEndian.Uint32(p[12:])
	s.Pid = binary.LittleEndian.Uint32(p[16:])
	s.CgroupID = binary.LittleEndian.Uint64(p[24:])
	s.Family, s.State, s.TimeWait, s.Purpose = p[32], probe.State(p[33]), p[34] == 1, Purpose(p[35])
	s.Lport = binary.LittleEndian.Uint16(p[36:])
	s.Rport = binary.LittleEndian.Uint16(p[38:])
	copy(s.Laddr[:], p[40:56])
	copy(s.Raddr[:], p[56:72])
	copy(s.Comm[:], p[72:88])
	switch {
	case s.Family != probe.AFInet && s.Family != probe.AFInet6:
		return fmt.Errorf("%w: family %d", ErrBadSocket, s.Family)
	case !s.State.Valid():
		return fmt.Errorf("%w: state %d", ErrBadSocket, s.State)
	case p[34] > 1:
		return fmt.Errorf("%w: time-wait flag %d", ErrBadSocket, p[34])
	case s.Purpose != PurposeSnapshot && s.Purpose != PurposeTimeWait:
		return fmt.Errorf("%w: purpose %d", ErrBadSocket, s.Purpose)
	}
	return nil
}

// DumpDoneSize is the encoded size of a DumpDone input.
const DumpDoneSize = 16

// AppendDumpDone encodes a DumpDone input for a recording.
func AppendDumpDone(b []byte, netns uint32, purpose Purpose, time uint64) []byte {
	b = binary.LittleEndian.AppendUint64(b, time)
	b = binary.LittleEndian.AppendUint32(b, netns)
	return append(b, uint8(purpose), 0, 0, 0)
}

// DecodeDumpDone decodes what AppendDumpDone wrote.
func DecodeDumpDone(p []byte) (netns uint32, purpose Purpose, time uint64, err error) {
	if len(p) != DumpDoneSize {
		return 0, 0, 0, fmt.Errorf("%w: dump end of %d bytes", ErrBadSocket, len(p))
	}
	purpose = Purpose(p[12])
	if purpose != PurposeSnapshot && purpose != PurposeTimeWait {
		return 0, 0, 0, fmt.Errorf("%w: dump purpose %d", ErrBadSocket, purpose)
	}
	return binary.LittleEndian.Uint32(p[8:]), purpose, binary.LittleEndian.Uint64(p), nil
}
