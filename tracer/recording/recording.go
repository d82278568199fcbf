// Package recording reads and writes tcpfsm recordings: every input of the
// lifecycle builder (the raw events, sock_diag observations, cgroup paths,
// clock ticks, lost-event counts, the kernel's features) and what the
// container runtime told the session (KindMeta), framed and
// checksummed, after a header that says how to read them (format version,
// event size) and how to place them in time (the kernel release and the
// wall clock time of the monotonic clock's zero).
//
// This package is the one codec of those inputs: Input holds one, decoded;
// Writer.WriteInput encodes it and Reader.Read decodes it (input.go lists
// each kind's payload). Write and Next are the framing underneath.
//
// In this package and its errors a record is one framed input of the
// recording; a connection's record is lifecycle.Record.
//
// Layout, little endian:
//
//	header:  magic "TCPFSMRC", version u16, header length u16, event size u16,
//	         reserved u16, boot ns i64, created ns i64,
//	         kernel release (u16 length + bytes), hostname (u16 length + bytes),
//	         CRC-32C of all of the above u32
//	records: kind u8, reserved u8, length u16, CRC-32C of the payload u32, payload
//
// A reader rejects what does not fit this with an error that names the
// byte offset, and never trusts a length before checking it.
package recording

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"
)

// Magic opens every recording.
const Magic = "TCPFSMRC"

// Version is the format this package writes; it reads MinVersion to
// Version. Version 1 events are the probe.Event layout of the same
// version; version 2 adds KindMeta, and reads every version 1 recording
// as it was.
const (
	Version    = 2
	MinVersion = 1
)

// Kind says what a record holds.
type Kind uint8

const (
	// KindEvent is one raw event, exactly as the ring buffer delivered it.
	KindEvent Kind = 1
	// KindLost is the tracer's cumulative lost-event counters at that
	// point: two u64, ring buffer full and program busy.
	KindLost Kind = 2
	// KindTick is the monotonic time (u64 ns) at which the tracer had
	// drained the ring buffer: it moves the lifecycle builder's clock.
	KindTick Kind = 3
	// KindSocket is one socket of a sock_diag dump (lifecycle.Socket).
	KindSocket Kind = 4
	// KindDumpDone ends a sock_diag dump of one namespace.
	KindDumpDone Kind = 5
	// KindCgroup is a cgroup id (u64) and its path (the rest).
	KindCgroup Kind = 6
	// KindFeatures is what the kernel side could do (u64 bit set), so a
	// replay reconstructs what the live tracer did.
	KindFeatures Kind = 7
	// KindMeta is what the container runtime told the session about a
	// container or a pod's IP (version 2), so a replay names what the
	// live run named.
	KindMeta Kind = 8
)

var kindNames = [...]string{KindEvent: "event", KindLost: "lost", KindTick: "tick", KindSocket: "socket",
	KindDumpDone: "dump_done", KindCgroup: "cgroup", KindFeatures: "features", KindMeta: "meta"}

func (k Kind) String() string {
	if k >= KindEvent && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// wantSize is a kind's payload size, -1 for variable, 0 for unknown kinds.
func (r *Reader) wantSize(k Kind) int {
	switch k {
	case KindEvent:
		return int(r.header.EventSize)
	case KindLost:
		return lostSize
	case KindTick, KindFeatures:
		return u64Size
	case KindSocket:
		return socketSize
	case KindDumpDone:
		return dumpDoneSize
	case KindCgroup:
		return -1
	case KindMeta:
		if r.header.Version >= 2 {
			return -1
		}
	}
	return 0
}

// minSize is the least payload of a variable-size kind.
func minSize(k Kind) int {
	if k == KindMeta {
		return metaMin
	}
	return cgroupMin
}

// MaxPayload bounds a record's payload.
const MaxPayload = 4096

const (
	recordHeaderSize = 8
	fixedHeaderSize  = 8 + 2*4 + 8*2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header describes a recording.
type Header struct {
	Version       uint16
	EventSize     uint16
	BootNs        int64 // wall clock Unix ns at monotonic zero
	Created       time.Time
	KernelRelease string
	Hostname      string
}

// FormatError is a recording that is not what the format says: it names
// where the problem starts.
type FormatError struct {
	Offset int64
	Msg    string
}

func (e *FormatError) Error() string { return fmt.Sprintf("offset %d: %s", e.Offset, e.Msg) }

// ErrUnsupported marks a recording of a version or event size this build
// cannot read.
var ErrUnsupported = errors.New("unsupported recording")

// Reader reads a recording.
type Reader struct {
	r       *bufio.Reader
	off     int64
	header  Header
	hdr     [recordHeaderSize]byte
	payload []byte
}

// NewReader reads and checks the header. wantEventSize, when not zero, is
// the event size this build understands; a recording with another one is
// refused with ErrUnsupported.
func NewReader(r io.Reader, wantEventSize int) (*Reader, error) {
	rd := &Reader{r: bufio.NewReaderSize(r, 256<<10), payload: make([]byte, MaxPayload)}
	fixed := make([]byte, fixedHeaderSize)
	if err := rd.readFull(fixed, "header"); err != nil {
		return nil, err
	}
	if string(fixed[:8]) != Magic {
		return nil, &FormatError{0, "not a tcpfsm recording (bad magic)"}
	}
	h := &rd.header
	h.Version = binary.LittleEndian.Uint16(fixed[8:])
	hdrLen := int(binary.LittleEndian.Uint16(fixed[10:]))
	h.EventSize = binary.LittleEndian.Uint16(fixed[12:])
	h.BootNs = int64(binary.LittleEndian.Uint64(fixed[16:]))
	h.Created = time.Unix(0, int64(binary.LittleEndian.Uint64(fixed[24:])))
	if h.Version < MinVersion || h.Version > Version {
		return nil, fmt.Errorf("%w: format version %d, this tcpfsm reads versions %d to %d", ErrUnsupported, h.Version, MinVersion, Version)
	}
	if wantEventSize != 0 && int(h.EventSize) != wantEventSize {
		return nil, fmt.Errorf("%w: events of %d bytes, this tcpfsm reads %d", ErrUnsupported, h.EventSize, wantEventSize)
	}
	if hdrLen < fixedHeaderSize+2+2+4 || hdrLen > fixedHeaderSize+2*(2+1024)+4 {
		return nil, &FormatError{10, fmt.Sprintf("bad header length %d", hdrLen)}
	}
	rest := make([]byte, hdrLen-fixedHeaderSize)
	if err := rd.readFull(rest, "header"); err != nil {
		return nil, err
	}
	sum := crc32.Update(crc32.Checksum(fixed, castagnoli), castagnoli, rest[:len(rest)-4])
	if sum != binary.LittleEndian.Uint32(rest[len(rest)-4:]) {
		return nil, &FormatError{int64(hdrLen - 4), "header checksum mismatch"}
	}
	var ok bool
	body := rest[:len(rest)-4]
	if h.KernelRelease, body, ok = lenString(body); !ok {
		return nil, &FormatError{fixedHeaderSize, "bad kernel release in header"}
	}
	if h.Hostname, body, ok = lenString(body); !ok || len(body) != 0 {
		return nil, &FormatError{fixedHeaderSize, "bad hostname in header"}
	}
	return rd, nil
}

func lenString(b []byte) (string, []byte, bool) {
	if len(b) < 2 {
		return "", nil, false
	}
	n := int(binary.LittleEndian.Uint16(b))
	if len(b) < 2+n {
		return "", nil, false
	}
	return string(b[2 : 2+n]), b[2+n:], true
}

// Header returns the recording's header.
func (r *Reader) Header() Header { return r.header }

// Offset is the position of the next record.
func (r *Reader) Offset() int64 { return r.off }

// Next returns the next record. The payload is valid until the next call.
// At the end of a well-formed recording it returns io.EOF; a recording
// cut inside a record gives a FormatError.
func (r *Reader) Next() (Kind, []byte, error) {
	start := r.off
	n, err := io.ReadFull(r.r, r.hdr[:])
	r.off += int64(n)
	switch {
	case err == io.EOF:
		return 0, nil, io.EOF
	case err == io.ErrUnexpectedEOF:
		return 0, nil, &FormatError{start, fmt.Sprintf("truncated record header: %d of %d bytes", n, recordHeaderSize)}
	case err != nil:
		return 0, nil, err
	}
	kind := Kind(r.hdr[0])
	size := int(binary.LittleEndian.Uint16(r.hdr[2:]))
	if r.hdr[1] != 0 {
		return 0, nil, &FormatError{start, fmt.Sprintf("bad record header (reserved byte %#x)", r.hdr[1])}
	}
	switch want := r.wantSize(kind); {
	case want == 0:
		return 0, nil, &FormatError{start, fmt.Sprintf("unknown record kind %d", kind)}
	case want < 0:
		if least := minSize(kind); size < least {
			return 0, nil, &FormatError{start, fmt.Sprintf("%s record of %d bytes, want at least %d", kind, size, least)}
		}
	case size != want:
		return 0, nil, &FormatError{start, fmt.Sprintf("%s record of %d bytes, want %d", kind, size, want)}
	}
	if size > MaxPayload {
		return 0, nil, &FormatError{start, fmt.Sprintf("record of %d bytes exceeds %d", size, MaxPayload)}
	}
	p := r.payload[:size]
	if err := r.readFull(p, "record"); err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			fe.Offset = start
		}
		return 0, nil, err
	}
	if crc32.Checksum(p, castagnoli) != binary.LittleEndian.Uint32(r.hdr[4:]) {
		return 0, nil, &FormatError{start, fmt.Sprintf("%s record checksum mismatch", kind)}
	}
	return kind, p, nil
}

func (r *Reader) readFull(b []byte, what string) error {
	n, err := io.ReadFull(r.r, b)
	start := r.off
	r.off += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return &FormatError{start, fmt.Sprintf("truncated %s: %d of %d bytes", what, n, len(b))}
	}
	return err
}
