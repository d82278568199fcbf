package sockdiag_test

// Sockets after the client's close: TIME_WAIT and FIN_WAIT2 mini-sockets,
// as sock_diag dumps them, and the dump's allocations.

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/sockdiag"
	"golang.org/x/sys/unix"
)

func closeClientFirst(t *testing.T, ns *nettest.NS, d *sockdiag.Dumper, network, listenAddr string, closeServer bool) (server *net.TCPConn, local, remote netip.AddrPort, cookie uint64) {
	t.Helper()
	ln := ns.Listen(t, network, listenAddr)
	c, s := connect(t, ns, network, ln, ln.Addr().String())
	local, remote = c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
	ino := inodeOf(t, c)
	for _, s := range dump(t, d, 1<<stateEstablished) {
		if s.Inode == ino {
			cookie = s.Cookie
		}
	}
	if cookie == 0 {
		t.Fatalf("client %s not dumped", local)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.Copy(io.Discard, s); err != nil || n != 0 {
		t.Fatalf("server read %d bytes, %v; want EOF", n, err)
	}
	if closeServer {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	ln.Close()
	return s, local, remote, cookie
}

// waitSocks dumps until the sockets are want, for at most 5 s, and
// returns the last dump.
func waitSocks(t *testing.T, d *sockdiag.Dumper, states uint32, want []sock) []sockdiag.Socket {
	t.Helper()
	sortSocks(want)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := dump(t, d, states)
		var g []sock
		for i := range got {
			g = append(g, toSock(&got[i]))
		}
		if slices.Equal(sortSocks(g), want) || time.Now().After(deadline) {
			wantSocks(t, fmt.Sprintf("Dump(%#x)", states), got, want)
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The side that closes first ends in a TIME_WAIT mini-socket: timer 3,
// no inode, no uid, expiring within 60 s.
func TestTimeWait(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		t.Run(tc.network, func(t *testing.T) {
			ns := nettest.NewNS(t)
			d := openIn(t, ns)
			_, local, remote, cookie := closeClientFirst(t, ns, d, tc.network, tc.addr, true)
			family := uint8(unix.AF_INET)
			if tc.network == "tcp6" {
				family = unix.AF_INET6
			}
			want := []sock{{Family: family, State: stateTimeWait, TimeWait: true, Local: local, Remote: remote}}
			// The server's FIN may not have reached the client yet,
			// and the client's ACK of it not the server.
			waitSocks(t, d, sockdiag.AllStates, want)
			got := dump(t, d, 1<<stateTimeWait)
			wantSocks(t, "Dump(TIME_WAIT)", got, want)
			// The mini-socket keeps the full socket's cookie.
			if s := got[0]; s.Timer != 3 || s.ExpiresMs == 0 || s.ExpiresMs > 60000 || s.Cookie != cookie {
				t.Errorf("time-wait socket %+v: want timer 3, 0 < expires <= 60000 ms, cookie %d", s, cookie)
			}
			if got := dump(t, d, sockdiag.AllStates&^(1<<stateTimeWait)); len(got) != 0 {
				t.Errorf("Dump(all but TIME_WAIT) = %+v, want nothing", got)
			}
		})
	}
}

// When the peer has not closed yet, the closed client is an orphan in
// FIN_WAIT2, which the kernel also hands to a mini-socket (when
// tcp_fin_timeout <= 60 s, as by default): reported as state FIN_WAIT2
// with timer 3, while the server's socket sits in CLOSE_WAIT.
func TestFinWait2MiniSocket(t *testing.T) {
	requireRoot(t)
	ns := nettest.NewNS(t)
	d := openIn(t, ns)
	s, local, remote, cookie := closeClientFirst(t, ns, d, "tcp4", "127.0.0.1:0", false)
	server := expect(t, stateCloseWait, s, s.LocalAddr(), s.RemoteAddr())
	mini := sock{Family: unix.AF_INET, State: stateFinWait2, TimeWait: true, Local: local, Remote: remote}
	// The server acknowledges the client's FIN with a delayed ACK:
	// until it arrives the client is an orphaned full socket in
	// FIN_WAIT1, with no inode either.
	waitSocks(t, d, sockdiag.AllStates, []sock{server, mini})
	got := dump(t, d, 1<<stateFinWait2)
	wantSocks(t, "Dump(FIN_WAIT2)", got, []sock{mini})
	if s := got[0]; s.Timer != 3 || s.ExpiresMs == 0 || s.ExpiresMs > 60000 || s.Cookie != cookie {
		t.Errorf("mini-socket %+v: want timer 3, 0 < expires <= 60000 ms, cookie %d", s, cookie)
	}
	if got := dump(t, d, 1<<stateTimeWait); len(got) != 0 {
		t.Errorf("Dump(TIME_WAIT) = %+v, want nothing", got)
	}
}

// Dump allocates nothing per socket, nor per dump.
func TestDumpAllocs(t *testing.T) {
	requireRoot(t)
	ns := nettest.NewNS(t)
	d := openIn(t, ns)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	for range 25 {
		connect(t, ns, "tcp4", ln, ln.Addr().String())
	}
	n := 0
	count := func(*sockdiag.Socket) error { n++; return nil }
	allocs := testing.AllocsPerRun(20, func() {
		if err := d.Dump(sockdiag.AllStates, count); err != nil {
			t.Fatal(err)
		}
	})
	if n != 21*51 {
		t.Fatalf("%d sockets in 21 dumps, want 51 each", n)
	}
	if allocs != 0 {
		t.Fatalf("%v allocations per dump of 51 sockets, want 0", allocs)
	}
}
