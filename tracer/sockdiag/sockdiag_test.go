package sockdiag_test

// Tests on the running kernel. Those that need root (network namespaces,
// setns) skip without it, except in CI (CI=true), where they fail. Dumps
// of listeners and connections here; TIME_WAIT and FIN_WAIT2 mini-sockets
// in timewait_test.go; owners and namespaces in owners_test.go.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/sockdiag"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	nettest.RunHelperIfAsked()
	os.Exit(m.Run())
}

// requireRoot is nettest.RequireBPF's rule without the BPF part, which
// sock_diag does not need.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if nettest.InCI() {
		t.Fatal("CI=true and not root: network namespaces need root")
	}
	t.Skip("needs root for network namespaces")
}

// openIn opens a Dumper in the test's namespace.
func openIn(t *testing.T, ns *nettest.NS) *sockdiag.Dumper {
	t.Helper()
	d, err := sockdiag.OpenInNetNS(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func dump(t *testing.T, d *sockdiag.Dumper, states uint32) []sockdiag.Socket {
	t.Helper()
	var out []sockdiag.Socket
	if err := d.Dump(states, func(s *sockdiag.Socket) error {
		out = append(out, *s)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// sock is what the tests compare: a Socket without its timer and cookie.
type sock struct {
	Family        uint8
	State         uint8
	TimeWait      bool
	Local, Remote netip.AddrPort
	Inode, UID    uint32
}

func (s sock) String() string {
	return fmt.Sprintf("af=%d state=%d tw=%v %s -> %s inode=%d uid=%d", s.Family, s.State, s.TimeWait, s.Local, s.Remote, s.Inode, s.UID)
}

func addrPort(family uint8, a [16]byte, port uint16) netip.AddrPort {
	if family == unix.AF_INET {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[:4])), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(a), port)
}

func toSock(s *sockdiag.Socket) sock {
	return sock{s.Family, s.State, s.TimeWait, addrPort(s.Family, s.Saddr, s.Sport), addrPort(s.Family, s.Daddr, s.Dport), s.Inode, s.UID}
}

// expect describes a socket of the test from its Go side.
func expect(t *testing.T, state uint8, c syscall.Conn, local, remote net.Addr) sock {
	t.Helper()
	l := local.(*net.TCPAddr).AddrPort()
	l = netip.AddrPortFrom(l.Addr().Unmap(), l.Port())
	r := netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	if !l.Addr().Is4() {
		r = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
	}
	if remote != nil {
		r = remote.(*net.TCPAddr).AddrPort()
		r = netip.AddrPortFrom(r.Addr().Unmap(), r.Port())
	}
	family := uint8(unix.AF_INET6)
	if l.Addr().Is4() {
		family = unix.AF_INET
	}
	return sock{Family: family, State: state, Local: l, Remote: r, Inode: inodeOf(t, c)}
}

func inodeOf(t *testing.T, c syscall.Conn) uint32 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return uint32(st.Ino)
}

func domain(t *testing.T, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var d int
	var derr error
	if err := rc.Control(func(fd uintptr) { d, derr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN) }); err != nil {
		t.Fatal(err)
	}
	if derr != nil {
		t.Fatal(derr)
	}
	return d
}

func sortSocks(s []sock) []sock {
	slices.SortFunc(s, func(a, b sock) int { return strings.Compare(a.String(), b.String()) })
	return s
}

func wantSocks(t *testing.T, what string, got []sockdiag.Socket, want []sock) {
	t.Helper()
	var g []sock
	for i := range got {
		g = append(g, toSock(&got[i]))
	}
	sortSocks(g)
	sortSocks(want)
	if !slices.Equal(g, want) {
		t.Fatalf("%s:\n got %v\nwant %v", what, g, want)
	}
}

// connect dials ln from inside ns and accepts; both ends close when the
// test ends.
func connect(t *testing.T, ns *nettest.NS, network string, ln *net.TCPListener, addr string) (client, server *net.TCPConn) {
	t.Helper()
	client, err := ns.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	server, err = ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

const (
	stateEstablished = 1
	stateFinWait2    = 5
	stateTimeWait    = 6
	stateCloseWait   = 8
	stateListen      = 10
)

// Listeners and established connections, IPv4, IPv6 and IPv4 through a
// dual-stack listener, with exactly their addresses, ports and inodes.
func TestDumpNetNS(t *testing.T) {
	requireRoot(t)
	ns := nettest.NewNS(t)
	d := openIn(t, ns)

	var want, listeners []sock
	for _, tc := range []struct{ listenNet, listenAddr, dialNet, dialHost string }{
		{"tcp4", "127.0.0.1:0", "tcp4", "127.0.0.1"},
		{"tcp6", "[::1]:0", "tcp6", "::1"},
		// The accepted socket is IPv6 with mapped addresses: reported as IPv4.
		{"tcp", "[::]:0", "tcp4", "127.0.0.1"},
	} {
		ln := ns.Listen(t, tc.listenNet, tc.listenAddr)
		addr := net.JoinHostPort(tc.dialHost, fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
		c, s := connect(t, ns, tc.dialNet, ln, addr)
		if tc.listenNet == "tcp" && domain(t, s) != unix.AF_INET6 {
			t.Fatal("the socket accepted by the dual-stack listener is not IPv6: the mapped case is not tested")
		}
		l := expect(t, stateListen, ln, ln.Addr(), nil)
		listeners = append(listeners, l)
		want = append(want, l,
			expect(t, stateEstablished, c, c.LocalAddr(), c.RemoteAddr()),
			expect(t, stateEstablished, s, s.LocalAddr(), s.RemoteAddr()))
	}

	// A socket that is only bound: AllStates leaves it out.
	if err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		t.Cleanup(func() { unix.Close(fd) })
		return unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
	}); err != nil {
		t.Fatal(err)
	}

	got := dump(t, d, 1<<stateEstablished|1<<stateListen)
	wantSocks(t, "Dump(ESTABLISHED|LISTEN)", got, want)
	cookies := map[uint64]uint32{}
	for _, s := range got {
		if s.Cookie == 0 || s.Inode == 0 || s.TimeWait {
			t.Errorf("socket %+v: want a cookie, an inode and not time-wait", s)
		}
		cookies[s.Cookie] = s.Inode
	}
	if len(cookies) != len(got) {
		t.Errorf("cookies are not unique: %v", cookies)
	}
	wantSocks(t, "Dump(AllStates)", dump(t, d, sockdiag.AllStates), want)
	wantSocks(t, "Dump(LISTEN)", dump(t, d, 1<<stateListen), listeners)
	for _, s := range dump(t, d, sockdiag.AllStates) {
		if cookies[s.Cookie] != s.Inode {
			t.Errorf("socket %+v: cookie changed between dumps", s)
		}
	}
	if got := dump(t, d, 0); len(got) != 0 {
		t.Errorf("Dump(0) = %v, want nothing", got)
	}
}

// A Dumper sees its own namespace only.
func TestDumpSeesOnlyItsNamespace(t *testing.T) {
	requireRoot(t)
	ns := nettest.NewNS(t)
	inNS := ns.Listen(t, "tcp4", "127.0.0.1:0")
	outside, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer outside.Close()
	inNSIno, outsideIno := inodeOf(t, inNS), inodeOf(t, outside)

	own, err := sockdiag.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	for _, tc := range []struct {
		name       string
		d          *sockdiag.Dumper
		see, avoid uint32
	}{
		{"own namespace", own, outsideIno, inNSIno},
		{"test namespace", openIn(t, ns), inNSIno, outsideIno},
	} {
		seen := false
		for _, s := range dump(t, tc.d, sockdiag.AllStates) {
			if s.Inode == tc.avoid {
				t.Errorf("%s: sees the other namespace's listener: %+v", tc.name, s)
			}
			seen = seen || s.Inode == tc.see
		}
		if !seen {
			t.Errorf("%s: does not see its own listener (inode %d)", tc.name, tc.see)
		}
	}
}

// Open needs no privileges: dump a listener of the test's own namespace.
func TestOpenUnprivileged(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d, err := sockdiag.Open()
	if err != nil {
		t.Fatal(err)
	}
	want := expect(t, stateListen, ln, ln.Addr(), nil)
	want.UID = uint32(os.Geteuid())
	var got []sock
	for _, s := range dump(t, d, 1<<stateListen) {
		if s.Inode == want.Inode {
			got = append(got, toSock(&s))
		}
	}
	if len(got) != 1 || got[0] != want {
		t.Errorf("listener: got %v, want %v", got, want)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := d.Dump(sockdiag.AllStates, func(*sockdiag.Socket) error { return nil }); err == nil {
		t.Error("Dump after Close: no error")
	}
}

func TestOpenInNetNSErrors(t *testing.T) {
	for _, path := range []string{"/nonexistent/ns/net", "/proc/self/ns/uts", "/dev/null"} {
		if d, err := sockdiag.OpenInNetNS(path); err == nil {
			d.Close()
			t.Errorf("OpenInNetNS(%s): no error", path)
		} else if !strings.Contains(err.Error(), path) {
			t.Errorf("OpenInNetNS(%s): error does not name the path: %v", path, err)
		}
	}
}

// An error from the callback stops Dump, which drains the rest of the
// kernel's reply so that the next Dump works.
func TestDumpCallbackError(t *testing.T) {
	requireRoot(t)
	ns := nettest.NewNS(t)
	d := openIn(t, ns)
	for range 300 { // several datagrams' worth
		ns.Listen(t, "tcp4", "127.0.0.1:0")
	}
	stop := errors.New("stop")
	calls := 0
	err := d.Dump(sockdiag.AllStates, func(*sockdiag.Socket) error { calls++; return stop })
	if calls != 1 || !errors.Is(err, stop) {
		t.Fatalf("Dump: %d calls, error %v; want 1 call and the callback's error", calls, err)
	}
	if got := dump(t, d, sockdiag.AllStates); len(got) != 300 {
		t.Fatalf("next Dump: %d sockets, want 300", len(got))
	}
}

// closeClientFirst makes a connection in ns and closes the client's end;
// the server closes too when closeServer is set, after reading EOF.
// It returns the client's local and remote addresses, and its cookie,
// dumped with d while the connection was established.
