package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrMalformed is wrapped by every error about bytes that are not a valid
// sock_diag reply.
var ErrMalformed = errors.New("malformed sock_diag reply")

// Wire layout, from include/uapi/linux/netlink.h and inet_diag.h. Netlink
// headers and the inet_diag counters are in host byte order; ports and
// addresses are in network byte order.
const (
	// struct nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32.
	nlmsgHdrLen = unix.NLMSG_HDRLEN

	// struct inet_diag_sockid: sport be16, dport be16, src [4]be32,
	// dst [4]be32, if u32, cookie [2]u32.
	sockidLen = 48

	// struct inet_diag_req_v2: family u8, protocol u8, ext u8, pad u8,
	// states u32, id.
	reqLen = 8 + sockidLen

	// struct inet_diag_msg: family u8, state u8, timer u8, retrans u8, id,
	// expires u32, rqueue u32, wqueue u32, uid u32, inode u32. Attributes
	// may follow; we ask for none and skip any.
	diagMsgLen = 4 + sockidLen + 20

	// idiag_timer value that only inet_twsk_diag_fill() writes.
	timerTimeWait = 3
)

// Offsets in struct inet_diag_msg.
const (
	offFamily  = 0
	offState   = 1
	offTimer   = 2
	offSport   = 4
	offDport   = 6
	offSrc     = 8
	offDst     = 24
	offCookie  = 44
	offExpires = 52
	offUID     = 64
	offInode   = 68
)

var (
	ne = binary.NativeEndian
	be = binary.BigEndian
)

// ParseMessages decodes one datagram of a SOCK_DIAG_BY_FAMILY dump reply
// and calls fn with s filled in for each socket; s is overwritten for every
// message, so fn must copy what it keeps. It allocates nothing.
//
// done reports that the message ending the reply (NLMSG_DONE, or
// NLMSG_ERROR) was seen; anything after it in buf is ignored. A kernel
// error, in NLMSG_ERROR or in NLMSG_DONE's payload, is returned as an
// error wrapping its syscall.Errno, with done true. Bytes that are not a
// valid reply give an error wrapping ErrMalformed. An error from fn stops
// the parse and is returned as it is.
func ParseMessages(buf []byte, s *Socket, fn func(*Socket) error) (done bool, err error) {
	return parseMessages(buf, 0, s, fn)
}

// parseMessages is ParseMessages that also requires every message to carry
// sequence number seq, unless seq is 0. fn may be nil, to skip a reply.
func parseMessages(buf []byte, seq uint32, s *Socket, fn func(*Socket) error) (bool, error) {
	for off := 0; off < len(buf); {
		rest := buf[off:]
		if len(rest) < nlmsgHdrLen {
			return false, fmt.Errorf("%w: %d trailing bytes at offset %d, less than a netlink header", ErrMalformed, len(rest), off)
		}
		n := ne.Uint32(rest[0:4])
		if n < nlmsgHdrLen || uint64(n) > uint64(len(rest)) {
			return false, fmt.Errorf("%w: nlmsg_len %d at offset %d, with %d bytes left", ErrMalformed, n, off, len(rest))
		}
		typ := ne.Uint16(rest[4:6])
		if got := ne.Uint32(rest[8:12]); seq != 0 && got != seq {
			return false, fmt.Errorf("%w: message at offset %d has sequence number %d, want %d", ErrMalformed, off, got, seq)
		}
		payload := rest[nlmsgHdrLen:n]

		switch typ {
		case unix.NLMSG_NOOP:
		case unix.NLMSG_DONE:
			// The payload is the dump's final return value: negative
			// when the kernel gave up part way.
			if len(payload) >= 4 {
				if code := int32(ne.Uint32(payload)); code < 0 {
					return true, fmt.Errorf("kernel ended the dump with an error: %w", errno(code))
				}
			}
			return true, nil
		case unix.NLMSG_ERROR:
			// struct nlmsgerr: int error, then the request's header.
			if len(payload) < 4 {
				return true, fmt.Errorf("%w: NLMSG_ERROR at offset %d with a %d-byte payload", ErrMalformed, off, len(payload))
			}
			code := int32(ne.Uint32(payload))
			switch {
			case code == 0:
				return true, nil // an acknowledgement: the request is over
			case code > 0:
				return true, fmt.Errorf("%w: NLMSG_ERROR at offset %d with positive error %d", ErrMalformed, off, code)
			}
			return true, fmt.Errorf("kernel refused the request: %w", errno(code))
		case unix.NLMSG_OVERRUN:
			return false, fmt.Errorf("%w: NLMSG_OVERRUN at offset %d", ErrMalformed, off)
		case unix.SOCK_DIAG_BY_FAMILY:
			if err := decode(payload, s); err != nil {
				return false, fmt.Errorf("message at offset %d: %w", off, err)
			}
			if fn != nil {
				if err := fn(s); err != nil {
					return false, err
				}
			}
		default:
			return false, fmt.Errorf("%w: message type %d at offset %d", ErrMalformed, typ, off)
		}
		// Messages start on 4-byte boundaries; the padding of the last
		// one may be cut off.
		off += int(min((uint64(n)+3)&^3, uint64(len(rest))))
	}
	return false, nil
}

// errno turns a negative kernel return value into its Errno. Callers make
// sure code < 0, so -code cannot overflow except for MinInt32, which is
// no errno anyway and stays a large number.
func errno(code int32) syscall.Errno {
	return syscall.Errno(uint32(-int64(code)))
}

// decode fills s from a struct inet_diag_msg.
func decode(p []byte, s *Socket) error {
	if len(p) < diagMsgLen {
		return fmt.Errorf("%w: inet_diag_msg of %d bytes, want at least %d", ErrMalformed, len(p), diagMsgLen)
	}
	family := p[offFamily]
	if family != unix.AF_INET && family != unix.AF_INET6 {
		return fmt.Errorf("%w: address family %d", ErrMalformed, family)
	}
	*s = Socket{
		Family:    family,
		State:     p[offState],
		Timer:     p[offTimer],
		Sport:     be.Uint16(p[offSport:]),
		Dport:     be.Uint16(p[offDport:]),
		Saddr:     [16]byte(p[offSrc : offSrc+16]),
		Daddr:     [16]byte(p[offDst : offDst+16]),
		Cookie:    uint64(ne.Uint32(p[offCookie:])) | uint64(ne.Uint32(p[offCookie+4:]))<<32,
		ExpiresMs: ne.Uint32(p[offExpires:]),
		UID:       ne.Uint32(p[offUID:]),
		Inode:     ne.Uint32(p[offInode:]),
	}
	// Only inet_twsk_diag_fill() reports timer 3: full sockets report 0
	// (none), 1 (retransmit), 2 (keepalive) or 4 (zero window probe), and
	// request sockets 1. State cannot tell (a time-wait mini-socket
	// reports its substate, FIN_WAIT2 or TIME_WAIT, and full sockets sit
	// in FIN_WAIT2 too), nor can a zero inode (every orphaned full
	// socket has one, and so do request sockets).
	s.TimeWait = s.Timer == timerTimeWait

	switch {
	case family == unix.AF_INET:
		// The kernel zeroes the rest; don't trust that.
		clear(s.Saddr[4:])
		clear(s.Daddr[4:])
	case isV4Mapped(&s.Saddr) && isV4Mapped(&s.Daddr):
		// An IPv6 socket talking IPv4 is an IPv4 connection, as the
		// tracer shows it.
		s.Family = unix.AF_INET
		unmap(&s.Saddr)
		unmap(&s.Daddr)
	}
	return nil
}

// isV4Mapped reports ::ffff:a.b.c.d.
func isV4Mapped(a *[16]byte) bool {
	return [12]byte(a[:12]) == [12]byte{10: 0xff, 11: 0xff}
}

// unmap moves the IPv4 address of ::ffff:a.b.c.d to the front.
func unmap(a *[16]byte) {
	copy(a[:4], a[12:])
	clear(a[4:])
}
