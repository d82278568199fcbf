package recording

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Input is one input of the lifecycle builder, decoded: Kind says which
// of the fields holds it. A live session fills one and writes it with
// WriteInput; a replay gets it back from Reader.Read; both then hand the
// same value to the builder. An Input is reused from one input to the
// next: encoding and decoding it does not allocate, but for a cgroup's
// path.
type Input struct {
	Kind Kind
	// KindEvent: one event, exactly as the ring buffer delivered it.
	Event probe.Event
	// KindLost: the tracer's cumulative lost-event counters.
	Lost probe.LostCounts
	// KindTick: the monotonic time (ns) at which the tracer had drained
	// the ring buffer.
	Tick uint64
	// KindSocket: one socket of a sock_diag dump.
	Socket lifecycle.Socket
	// KindDumpDone: the end of a complete dump of one namespace.
	DumpDone DumpDone
	// KindCgroup: a cgroup id and its path.
	Cgroup Cgroup
	// KindFeatures: what the kernel side could do. Only the booleans are
	// recorded.
	Features probe.Features
	// KindMeta: what the container runtime told the session (meta.go).
	Meta Meta
}

// DumpDone ends a sock_diag dump of one network namespace.
type DumpDone struct {
	NetNS   uint32
	Purpose lifecycle.Purpose
	Time    uint64 // CLOCK_MONOTONIC ns when the dump began
	// FinTimeout is the namespace's tcp_fin_timeout as the dump found it,
	// in whole seconds up to MaxFinTimeout; 0 when not read (and in
	// recordings made before it was).
	FinTimeout time.Duration
}

// MaxFinTimeout is the largest FinTimeout a recording holds (a u16 of
// seconds); larger ones are recorded as this.
const MaxFinTimeout = 65535 * time.Second

// Cgroup names a cgroup v2 id: its path relative to the cgroup2 mount.
type Cgroup struct {
	ID   uint64
	Path string
}

// Payload layouts, little endian:
//
//	event      probe.Event, as the ring buffer delivered it (the header's event size)
//	lost       ring buffer full u64, program busy u64
//	tick       monotonic ns u64
//	socket     time u64, netns u32, expires ms u32, pid u32, reserved u32, cgroup id u64,
//	           family u8, state u8, time-wait u8 (0 or 1), purpose u8, lport u16, rport u16,
//	           laddr [16], raddr [16], comm [16]
//	dump_done  time u64, netns u32, purpose u8, reserved u8, tcp_fin_timeout s u16 (0: unknown;
//	           reserved, and so 0, before it was added, in the same format version)
//	cgroup     id u64, path (the rest, at most MaxPayload-8 bytes)
//	features   bit set u64: time-wait 1, resets 2, SYN retransmits 4, accept owner 8
//	meta       see meta.go (version 2)
//
// Purposes (lifecycle.Purpose): 1 snapshot at start, 2 time-wait poll,
// 3 reconciliation (sockets, and the end of a complete dump), 4 and 5 a
// reconciliation's begin and abort (dump_done only). Recordings made
// before reconciliation hold 1 and 2 only and replay as they did.
const (
	lostSize     = 16
	u64Size      = 8
	socketSize   = 8 + 4*4 + 8 + 4 + 2*2 + 16*3
	dumpDoneSize = 16
	cgroupMin    = 8
)

// Features bits of a KindFeatures payload.
const (
	featTimeWait uint64 = 1 << iota
	featResets
	featSynRetransmits
	featAcceptOwner
)

// ErrBadInput is a record whose payload does not decode into its kind.
// The messages wrapping it read "malformed socket record: ...".
var ErrBadInput = errors.New("malformed")

// WriteInput appends one input. It does not allocate.
func (w *Writer) WriteInput(in *Input) error {
	b := w.scratch[:0]
	switch in.Kind {
	case KindEvent:
		return w.Write(KindEvent, in.Event.Bytes())
	case KindLost:
		b = binary.LittleEndian.AppendUint64(b, in.Lost.RingFull)
		b = binary.LittleEndian.AppendUint64(b, in.Lost.Recursion)
	case KindTick:
		b = binary.LittleEndian.AppendUint64(b, in.Tick)
	case KindSocket:
		b = appendSocket(b, &in.Socket)
	case KindDumpDone:
		d := &in.DumpDone
		b = binary.LittleEndian.AppendUint64(b, d.Time)
		b = binary.LittleEndian.AppendUint32(b, d.NetNS)
		b = append(b, uint8(d.Purpose), 0)
		b = binary.LittleEndian.AppendUint16(b, uint16(min(max(d.FinTimeout, 0), MaxFinTimeout)/time.Second))
	case KindCgroup:
		path := in.Cgroup.Path
		if len(path) > MaxPayload-cgroupMin {
			path = path[:MaxPayload-cgroupMin]
		}
		b = binary.LittleEndian.AppendUint64(b, in.Cgroup.ID)
		b = append(b, path...)
	case KindFeatures:
		b = binary.LittleEndian.AppendUint64(b, featureBits(in.Features))
	case KindMeta:
		var err error
		if b, err = appendMeta(b, &in.Meta); err != nil {
			return err
		}
	default:
		return fmt.Errorf("write input: unknown kind %s", in.Kind)
	}
	return w.Write(in.Kind, b)
}

// Read reads the next record and decodes it into in. At the end of a
// well-formed recording it returns io.EOF. A record whose framing is
// damaged gives a FormatError; one whose payload does not decode, an
// error naming its offset and kind that wraps ErrBadInput or
// probe.ErrBadEvent.
func (r *Reader) Read(in *Input) error {
	off := r.off
	kind, p, err := r.Next()
	if err != nil {
		return err
	}
	if err := decode(kind, p, in); err != nil {
		return fmt.Errorf("offset %d: %s record: %w", off, kind, err)
	}
	return nil
}

// decode fills in from a record's payload.
func decode(kind Kind, p []byte, in *Input) error {
	in.Kind = kind
	switch kind {
	case KindEvent:
		return probe.Decode(p, &in.Event)
	case KindLost:
		if len(p) != lostSize {
			return fmt.Errorf("%w lost record: %d bytes", ErrBadInput, len(p))
		}
		in.Lost = probe.LostCounts{RingFull: binary.LittleEndian.Uint64(p), Recursion: binary.LittleEndian.Uint64(p[8:])}
	case KindTick:
		if len(p) != u64Size {
			return fmt.Errorf("%w tick record: %d bytes", ErrBadInput, len(p))
		}
		in.Tick = binary.LittleEndian.Uint64(p)
	case KindSocket:
		return decodeSocket(p, &in.Socket)
	case KindDumpDone:
		return decodeDumpDone(p, &in.DumpDone)
	case KindCgroup:
		if len(p) < cgroupMin {
			return fmt.Errorf("%w cgroup record: %d bytes", ErrBadInput, len(p))
		}
		in.Cgroup = Cgroup{ID: binary.LittleEndian.Uint64(p), Path: string(p[cgroupMin:])}
	case KindFeatures:
		if len(p) != u64Size {
			return fmt.Errorf("%w features record: %d bytes", ErrBadInput, len(p))
		}
		in.Features = features(binary.LittleEndian.Uint64(p))
	case KindMeta:
		return decodeMeta(p, &in.Meta)
	default:
		return fmt.Errorf("%w record: unknown kind %s", ErrBadInput, kind)
	}
	return nil
}

func featureBits(f probe.Features) uint64 {
	var bits uint64
	for _, x := range []struct {
		on  bool
		bit uint64
	}{{f.TimeWait, featTimeWait}, {f.Resets, featResets}, {f.SynRetransmits, featSynRetransmits}, {f.AcceptOwner, featAcceptOwner}} {
		if x.on {
			bits |= x.bit
		}
	}
	return bits
}

func features(bits uint64) probe.Features {
	return probe.Features{
		TimeWait:       bits&featTimeWait != 0,
		Resets:         bits&featResets != 0,
		SynRetransmits: bits&featSynRetransmits != 0,
		AcceptOwner:    bits&featAcceptOwner != 0,
	}
}

func appendSocket(b []byte, s *lifecycle.Socket) []byte {
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

func decodeSocket(p []byte, s *lifecycle.Socket) error {
	if len(p) != socketSize {
		return fmt.Errorf("%w socket record: %d bytes, want %d", ErrBadInput, len(p), socketSize)
	}
	s.Time = binary.LittleEndian.Uint64(p)
	s.NetNS = binary.LittleEndian.Uint32(p[8:])
	s.ExpiresMs = binary.LittleEndian.Uint32(p[12:])
	s.Pid = binary.LittleEndian.Uint32(p[16:])
	s.CgroupID = binary.LittleEndian.Uint64(p[24:])
	s.Family, s.State, s.TimeWait, s.Purpose = p[32], probe.State(p[33]), p[34] == 1, lifecycle.Purpose(p[35])
	s.Lport = binary.LittleEndian.Uint16(p[36:])
	s.Rport = binary.LittleEndian.Uint16(p[38:])
	copy(s.Laddr[:], p[40:56])
	copy(s.Raddr[:], p[56:72])
	copy(s.Comm[:], p[72:88])
	switch {
	case s.Family != probe.AFInet && s.Family != probe.AFInet6:
		return fmt.Errorf("%w socket record: family %d", ErrBadInput, s.Family)
	case !s.State.Valid():
		return fmt.Errorf("%w socket record: state %d", ErrBadInput, s.State)
	case p[34] > 1:
		return fmt.Errorf("%w socket record: time-wait flag %d", ErrBadInput, p[34])
	case !s.Purpose.Valid():
		return fmt.Errorf("%w socket record: purpose %d", ErrBadInput, s.Purpose)
	}
	return nil
}

func decodeDumpDone(p []byte, d *DumpDone) error {
	if len(p) != dumpDoneSize {
		return fmt.Errorf("%w socket record: dump end of %d bytes", ErrBadInput, len(p))
	}
	d.Time = binary.LittleEndian.Uint64(p)
	d.NetNS = binary.LittleEndian.Uint32(p[8:])
	d.Purpose = lifecycle.Purpose(p[12])
	d.FinTimeout = time.Duration(binary.LittleEndian.Uint16(p[14:])) * time.Second
	if !d.Purpose.Valid() {
		return fmt.Errorf("%w socket record: dump purpose %d", ErrBadInput, d.Purpose)
	}
	return nil
}
