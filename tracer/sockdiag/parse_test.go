package sockdiag_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tcpfsm/tcpfsm/tracer/sockdiag"
)

// The byte layouts below are written out from the kernel's uapi headers
// independently of the package's own constants.

// nlmsg encodes a netlink message with its padding.
func nlmsg(typ uint16, seq uint32, payload []byte) []byte {
	b := make([]byte, 16, 16+len(payload)+3)
	binary.NativeEndian.PutUint32(b[0:], uint32(16+len(payload)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_MULTI)
	binary.NativeEndian.PutUint32(b[8:], seq)
	binary.NativeEndian.PutUint32(b[12:], 4242) // the receiver's port id
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// diagMsg is a struct inet_diag_msg.
type diagMsg struct {
	family, state, timer uint8
	sport, dport         uint16
	src, dst             [16]byte
	ifindex              uint32
	cookie               uint64
	expires, uid, inode  uint32
	attrs                []byte // appended after the struct
}

func (m diagMsg) bytes() []byte {
	b := make([]byte, 72)
	b[0], b[1], b[2], b[3] = m.family, m.state, m.timer, 0
	binary.BigEndian.PutUint16(b[4:], m.sport)
	binary.BigEndian.PutUint16(b[6:], m.dport)
	copy(b[8:], m.src[:])
	copy(b[24:], m.dst[:])
	binary.NativeEndian.PutUint32(b[40:], m.ifindex)
	binary.NativeEndian.PutUint32(b[44:], uint32(m.cookie))
	binary.NativeEndian.PutUint32(b[48:], uint32(m.cookie>>32))
	binary.NativeEndian.PutUint32(b[52:], m.expires)
	binary.NativeEndian.PutUint32(b[56:], 7) // rqueue
	binary.NativeEndian.PutUint32(b[60:], 9) // wqueue
	binary.NativeEndian.PutUint32(b[64:], m.uid)
	binary.NativeEndian.PutUint32(b[68:], m.inode)
	return append(b, m.attrs...)
}

func (m diagMsg) nl() []byte { return nlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, m.bytes()) }

func done(code int32) []byte {
	return nlmsg(unix.NLMSG_DONE, 1, binary.NativeEndian.AppendUint32(nil, uint32(code)))
}

// nlerr is an NLMSG_ERROR: the error, then the request's header.
func nlerr(code int32) []byte {
	p := binary.NativeEndian.AppendUint32(nil, uint32(code))
	return nlmsg(unix.NLMSG_ERROR, 1, append(p, make([]byte, 16)...))
}

func ip(s string) [16]byte { return netip.MustParseAddr(s).As16() }

func ip4(s string) [16]byte {
	var b [16]byte
	a := netip.MustParseAddr(s).As4()
	copy(b[:], a[:])
	return b
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

var (
	v4Established = diagMsg{family: unix.AF_INET, state: 1, timer: 2, sport: 40000, dport: 8080,
		src: ip4("10.1.2.3"), dst: ip4("10.9.8.7"), cookie: 0x1122334455667788, expires: 7100, uid: 1000, inode: 12345}
	v6Listen = diagMsg{family: unix.AF_INET6, state: 10, sport: 443,
		src: ip("2001:db8::1"), dst: ip("::"), cookie: 77, uid: 0, inode: 999}
	v6Mapped = diagMsg{family: unix.AF_INET6, state: 1, sport: 8080, dport: 51000,
		src: ip("::ffff:127.0.0.1"), dst: ip("::ffff:127.0.0.2"), cookie: 78, inode: 1000}
	v6TimeWait = diagMsg{family: unix.AF_INET6, state: 6, timer: 3, sport: 51000, dport: 8080,
		src: ip("::1"), dst: ip("::1"), cookie: 79, expires: 59876}
	v4FinWait2Mini = diagMsg{family: unix.AF_INET, state: 5, timer: 3, sport: 51001, dport: 8080,
		src: ip4("127.0.0.1"), dst: ip4("127.0.0.1"), cookie: 80, expires: 60000}
)

func TestParseMessages(t *testing.T) {
	junkTail := v4Established
	junkTail.src[7], junkTail.dst[15] = 0xaa, 0xbb
	// An IPv6 listener bound to a mapped address: the remote is ::, not
	// mapped, so the socket stays IPv6.
	mappedListener := diagMsg{family: unix.AF_INET6, state: 10, sport: 80, src: ip("::ffff:127.0.0.1"), inode: 5}
	withAttrs := v4Established
	withAttrs.attrs = []byte{8, 0, 1, 0, 1, 2, 3, 4, 5} // an rtattr and an odd byte: padding follows
	unpadded := nlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, append(v6Listen.bytes(), 1))
	unpadded = unpadded[:16+73] // cut the padding of the last message
	shortLen := v4Established.nl()
	binary.NativeEndian.PutUint32(shortLen, 15)
	longLen := v4Established.nl()
	binary.NativeEndian.PutUint32(longLen, uint32(len(longLen)+4))
	hugeLen := v4Established.nl()
	binary.NativeEndian.PutUint32(hugeLen, 0xffffffff)
	badFamily := v4Established
	badFamily.family = unix.AF_UNIX

	v4 := sockdiag.Socket{Family: unix.AF_INET, State: 1, Timer: 2, Sport: 40000, Dport: 8080,
		Saddr: ip4("10.1.2.3"), Daddr: ip4("10.9.8.7"), Cookie: 0x1122334455667788, ExpiresMs: 7100, UID: 1000, Inode: 12345}
	v6 := sockdiag.Socket{Family: unix.AF_INET6, State: 10, Sport: 443,
		Saddr: ip("2001:db8::1"), Cookie: 77, Inode: 999}

	tests := []struct {
		name     string
		buf      []byte
		want     []sockdiag.Socket
		wantDone bool
		wantErr  error  // errors.Is
		errText  string // and a part of the message
	}{
		{name: "IPv4 socket", buf: cat(v4Established.nl()), want: []sockdiag.Socket{v4}},
		{name: "IPv6 socket", buf: cat(v6Listen.nl()), want: []sockdiag.Socket{v6}},
		{name: "IPv4-mapped IPv6 is IPv4", buf: cat(v6Mapped.nl()), want: []sockdiag.Socket{{
			Family: unix.AF_INET, State: 1, Sport: 8080, Dport: 51000,
			Saddr: ip4("127.0.0.1"), Daddr: ip4("127.0.0.2"), Cookie: 78, Inode: 1000}}},
		{name: "one mapped address stays IPv6", buf: cat(mappedListener.nl()), want: []sockdiag.Socket{{
			Family: unix.AF_INET6, State: 10, Sport: 80, Saddr: ip("::ffff:127.0.0.1"), Inode: 5}}},
		{name: "time-wait socket", buf: cat(v6TimeWait.nl()), want: []sockdiag.Socket{{
			Family: unix.AF_INET6, State: 6, TimeWait: true, Timer: 3, Sport: 51000, Dport: 8080,
			Saddr: ip("::1"), Daddr: ip("::1"), Cookie: 79, ExpiresMs: 59876}}},
		{name: "FIN_WAIT2 mini-socket", buf: cat(v4FinWait2Mini.nl()), want: []sockdiag.Socket{{
			Family: unix.AF_INET, State: 5, TimeWait: true, Timer: 3, Sport: 51001, Dport: 8080,
			Saddr: ip4("127.0.0.1"), Daddr: ip4("127.0.0.1"), Cookie: 80, ExpiresMs: 60000}}},
		{name: "IPv4 address bytes past 4 are cleared", buf: cat(junkTail.nl()), want: []sockdiag.Socket{v4}},
		{name: "attributes are skipped", buf: cat(withAttrs.nl(), v6Listen.nl()), want: []sockdiag.Socket{v4, v6}},
		{name: "multi-part datagram then done", buf: cat(v4Established.nl(), v6Listen.nl(), done(0)),
			want: []sockdiag.Socket{v4, v6}, wantDone: true},
		{name: "unpadded last message", buf: unpadded, want: []sockdiag.Socket{v6}},
		{name: "NLMSG_DONE", buf: done(0), wantDone: true},
		{name: "NLMSG_DONE without payload", buf: nlmsg(unix.NLMSG_DONE, 1, nil), wantDone: true},
		{name: "messages after NLMSG_DONE are ignored", buf: cat(done(0), v4Established.nl(), []byte{1, 2, 3}), wantDone: true},
		{name: "NLMSG_NOOP is skipped", buf: cat(nlmsg(unix.NLMSG_NOOP, 1, nil), v6Listen.nl()), want: []sockdiag.Socket{v6}},
		{name: "empty buffer", buf: nil},
		{name: "NLMSG_DONE with an error", buf: done(-int32(unix.EMSGSIZE)), wantDone: true,
			wantErr: unix.EMSGSIZE, errText: "kernel ended the dump"},
		{name: "NLMSG_ERROR with an errno", buf: cat(v6Listen.nl(), nlerr(-int32(unix.EINVAL))),
			want: []sockdiag.Socket{v6}, wantDone: true, wantErr: unix.EINVAL, errText: "kernel refused"},
		{name: "NLMSG_ERROR acknowledgement", buf: nlerr(0), wantDone: true},
		{name: "NLMSG_ERROR with a positive error", buf: nlerr(5), wantDone: true, wantErr: sockdiag.ErrMalformed, errText: "positive error 5"},
		{name: "NLMSG_ERROR too short", buf: nlmsg(unix.NLMSG_ERROR, 1, []byte{1, 2}), wantDone: true,
			wantErr: sockdiag.ErrMalformed, errText: "2-byte payload"},
		{name: "truncated header", buf: cat(v4Established.nl(), v6Listen.nl()[:10]), want: []sockdiag.Socket{v4},
			wantErr: sockdiag.ErrMalformed, errText: "10 trailing bytes at offset 88"},
		{name: "truncated message", buf: v4Established.nl()[:50], wantErr: sockdiag.ErrMalformed, errText: "nlmsg_len 88 at offset 0, with 50 bytes left"},
		{name: "length below header size", buf: shortLen, wantErr: sockdiag.ErrMalformed, errText: "nlmsg_len 15"},
		{name: "length past the buffer", buf: longLen, wantErr: sockdiag.ErrMalformed, errText: "nlmsg_len 92"},
		{name: "length 0xffffffff", buf: hugeLen, wantErr: sockdiag.ErrMalformed, errText: "nlmsg_len 4294967295"},
		{name: "zero length", buf: make([]byte, 32), wantErr: sockdiag.ErrMalformed, errText: "nlmsg_len 0"},
		{name: "short inet_diag_msg", buf: nlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, v4Established.bytes()[:71]),
			wantErr: sockdiag.ErrMalformed, errText: "inet_diag_msg of 71 bytes"},
		{name: "bad address family", buf: badFamily.nl(), wantErr: sockdiag.ErrMalformed, errText: "address family 1"},
		{name: "unknown message type", buf: nlmsg(99, 1, nil), wantErr: sockdiag.ErrMalformed, errText: "message type 99"},
		{name: "NLMSG_OVERRUN", buf: nlmsg(unix.NLMSG_OVERRUN, 1, nil), wantErr: sockdiag.ErrMalformed, errText: "NLMSG_OVERRUN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []sockdiag.Socket
			var s sockdiag.Socket
			isDone, err := sockdiag.ParseMessages(tt.buf, &s, func(s *sockdiag.Socket) error {
				got = append(got, *s)
				return nil
			})
			if tt.wantErr == nil && err != nil {
				t.Fatalf("error: %v", err)
			}
			if tt.wantErr != nil && (!errors.Is(err, tt.wantErr) || !strings.Contains(fmt.Sprint(err), tt.errText)) {
				t.Fatalf("error %v, want %v containing %q", err, tt.wantErr, tt.errText)
			}
			if isDone != tt.wantDone {
				t.Errorf("done = %v, want %v", isDone, tt.wantDone)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d sockets, want %d:\n got %+v\nwant %+v", len(got), len(tt.want), got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("socket %d:\n got %+v\nwant %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

// An error from the callback stops the parse and comes back unchanged.
func TestParseMessagesCallbackError(t *testing.T) {
	stop := errors.New("stop")
	calls := 0
	var s sockdiag.Socket
	isDone, err := sockdiag.ParseMessages(cat(v4Established.nl(), v6Listen.nl(), done(0)), &s, func(*sockdiag.Socket) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || isDone || calls != 1 {
		t.Fatalf("got done=%v err=%v after %d calls, want done=false err=stop after 1", isDone, err, calls)
	}
}

// Parsing allocates nothing, whatever the number of sockets.
func TestParseMessagesAllocs(t *testing.T) {
	var buf []byte
	for i := range 50 {
		m := v4Established
		m.sport += uint16(i)
		buf = append(buf, m.nl()...)
	}
	buf = append(buf, done(0)...)
	var s sockdiag.Socket
	n := 0
	count := func(*sockdiag.Socket) error { n++; return nil }
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := sockdiag.ParseMessages(buf, &s, count); err != nil {
			t.Fatal(err)
		}
	})
	if n != 101*50 { // AllocsPerRun runs once more to warm up
		t.Fatalf("callback ran %d times, want %d", n, 101*50)
	}
	if allocs != 0 {
		t.Fatalf("%v allocations per parse of 50 sockets, want 0", allocs)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(cat(v4Established.nl(), v6Listen.nl(), done(0)))
	f.Add(cat(v6Mapped.nl(), v6TimeWait.nl(), v4FinWait2Mini.nl()))
	f.Add(nlerr(-int32(unix.EPERM)))
	f.Add(done(-int32(unix.EINTR)))
	f.Add(v4Established.nl()[:40])
	f.Fuzz(func(t *testing.T, buf []byte) {
		var s sockdiag.Socket
		n := 0
		isDone, err := sockdiag.ParseMessages(buf, &s, func(s *sockdiag.Socket) error {
			n++
			switch s.Family {
			case unix.AF_INET:
				if [12]byte(s.Saddr[4:]) != [12]byte{} || [12]byte(s.Daddr[4:]) != [12]byte{} {
					t.Fatalf("IPv4 socket with bytes past the address: %+v", s)
				}
			case unix.AF_INET6:
			default:
				t.Fatalf("family %d", s.Family)
			}
			if s.TimeWait != (s.Timer == 3) {
				t.Fatalf("TimeWait %v with timer %d", s.TimeWait, s.Timer)
			}
			return nil
		})
		// Each socket takes at least a header and an inet_diag_msg.
		if n > len(buf)/(16+72) {
			t.Fatalf("%d sockets from %d bytes", n, len(buf))
		}
		if err != nil && !isDone && !errors.Is(err, sockdiag.ErrMalformed) {
			t.Fatalf("error that is neither the kernel's nor ErrMalformed: %v", err)
		}
	})
}
