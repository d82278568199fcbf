// Package nettest gives tcpfsm's privileged tests what they need: a fresh
// network namespace per test, TCP traffic made inside it by the test
// itself or by helper processes, and the rule that decides whether a test
// without BPF privileges skips or fails.
package nettest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// InCI reports whether the tests run in CI, where nothing may skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// InKernelVM reports whether the tests run in .ci/kernels' qemu VM: a
// busybox initramfs (busybox's nsenter, no logrotate) with iproute2's
// ss (on x86-64 the host's, on arm64 Debian's arm64 build) and 4 GiB of
// memory.
func InKernelVM() bool {
	h, _ := os.Hostname()
	return h == "tcpfsm-vm"
}

// Slow stretches a bound on waiting for the kernel or a helper process
// by 4 in the kernel VM, whose software emulation runs programs 5 to 20
// times slower than the host (.ci/kernels/README.md): 8,000 loopback
// connects take one process about 60 s there.
func Slow(d time.Duration) time.Duration {
	if InKernelVM() {
		return 4 * d
	}
	return d
}

// RequireTool skips a test that needs a command the machine lacks: in
// the kernel VM, whose initramfs carries only what the kernel's
// scenarios need (arm64's has no ss); elsewhere in CI it fails, since
// .ci/run installs them.
func RequireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if InCI() && !InKernelVM() {
		t.Fatalf("CI=true: needs %s (Debian package %s)", name, pkg)
	}
	t.Skipf("needs %s (Debian package %s)", name, pkg)
	return ""
}

// RequireBPF skips the test when this process cannot load tcpfsm's
// programs, and fails it instead in CI.
func RequireBPF(t testing.TB) {
	t.Helper()
	if err := probe.Preflight(); err != nil {
		if InCI() {
			t.Fatalf("CI=true and BPF programs cannot be loaded: %v", err)
		}
		t.Skipf("needs BPF privileges (run as root): %v", err)
	}
	if os.Geteuid() != 0 {
		if InCI() {
			t.Fatalf("CI=true and not root: network namespaces need root")
		}
		t.Skip("needs root for network namespaces")
	}
}

// NS is a network namespace made for one test, with loopback up.
type NS struct {
	fd    int
	Inode uint32
}

// NewNS creates a network namespace that lives until the test ends.
func NewNS(t testing.TB) *NS {
	t.Helper()
	ns, err := newNS()
	if err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	t.Cleanup(func() { unix.Close(ns.fd) })
	return ns
}

func newNS() (*NS, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(orig)
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("unshare: %w", err)
	}
	// From here the thread must get back to its namespace whatever happens.
	restore := func() error {
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// A thread stuck in the wrong namespace must not be reused.
			runtime.LockOSThread()
			return fmt.Errorf("restore network namespace: %w", err)
		}
		return nil
	}
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = restore() // err is the first error; a failed restore locks the thread
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		_ = restore() // err is the first error; a failed restore locks the thread
		return nil, err
	}
	if err := loopbackUp(); err != nil {
		unix.Close(fd)
		_ = restore() // err is the first error; a failed restore locks the thread
		return nil, err
	}
	if err := restore(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &NS{fd: fd, Inode: uint32(st.Ino)}, nil
}

func loopbackUp() error { return setLoopback(true) }

func setLoopback(up bool) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get lo flags: %w", err)
	}
	flags := ifr.Uint16() &^ unix.IFF_UP
	if up {
		flags |= unix.IFF_UP
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up=%v: %w", up, err)
	}
	return nil
}

// Do runs f on a thread inside the namespace. Sockets f creates belong to
// the namespace for good; processes it starts are born in it.
func (n *NS) Do(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(orig)
	if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter network namespace: %w", err)
	}
	ferr := f()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime then discards it.
		runtime.LockOSThread()
		return fmt.Errorf("leave network namespace: %w", err)
	}
	return ferr
}

// Path is a file naming the namespace, valid while the test runs, for
// tools that take a path (tcpfsm --netns).
func (n *NS) Path() string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), n.fd)
}

// Listen opens a TCP listener inside the namespace.
func (n *NS) Listen(t testing.TB, network, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// Dial connects from inside the namespace.
func (n *NS) Dial(network, addr string) (*net.TCPConn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = net.Dial(network, addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// SetLoopback brings the namespace's loopback down or up. While it is
// down, segments between its sockets are lost and TCP retransmits them.
func (n *NS) SetLoopback(t testing.TB, up bool) {
	t.Helper()
	if err := n.Do(func() error { return setLoopback(up) }); err != nil {
		t.Fatalf("loopback up=%v: %v", up, err)
	}
}

// ListenBacklog listens with an accept queue of the given length, which
// Go's net.Listen does not offer: a full queue makes the kernel drop SYNs.
func (n *NS) ListenBacklog(t testing.TB, addr string, backlog int) *net.TCPListener {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	err = n.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), "listener")
		defer f.Close()
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}); err != nil {
			return err
		}
		if err := unix.Listen(fd, backlog); err != nil {
			return err
		}
		ln, err = net.FileListener(f)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s backlog %d: %v", addr, backlog, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// DialSynCount connects from inside the namespace, giving up after
// synCount SYN retransmits (TCP_SYNCNT).
func (n *NS) DialSynCount(network, addr string, synCount int) (*net.TCPConn, error) {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_SYNCNT, synCount)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = d.Dial(network, addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// IsRefused reports a connection refused by the peer.
func IsRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// DialFrom connects from a fixed local address, with SO_REUSEADDR so it
// may bind while a TIME_WAIT holds that port.
func (n *NS) DialFrom(network, local, remote string) (*net.TCPConn, error) {
	laddr, err := net.ResolveTCPAddr(network, local)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{LocalAddr: laddr, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	var c net.Conn
	err = n.Do(func() error {
		var err error
		c, err = d.Dial(network, remote)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// resetWait bounds Churn's wait for a client's RST at its server end:
// loopback delivers it at once, or a deferred softirq within
// milliseconds; only a stalled VM takes longer.
const resetWait = 30 * time.Second

// Churn makes up to n connections to ln from inside the namespace, one at
// a time, each accepted then closed with a RST by the client (SO_LINGER
// 0, so no TIME_WAIT piles up), until n are done or stop is closed. After
// each, done (when not nil) gets the client's port. It returns how many
// it made, and the first error.
//
// The server end is closed only once it has taken the client's RST, so
// every connection makes the same events: the client's ESTABLISHED ->
// CLOSE and reset_sent, the server's reset_received and ESTABLISHED ->
// CLOSE. The RST is not always taken by the time the client's close()
// returns: a kernel before 6.5 leaves the softirq that delivers it to
// ksoftirqd whenever ksoftirqd is already running on the CPU (do_softirq's
// ksoftirqd_running() check, since reverted), as it often is in an
// emulated VM on a busy host. A server that closed then would go
// ESTABLISHED -> FIN_WAIT1 first and take the RST there: one event more.
func (n *NS) Churn(ln *net.TCPListener, count int, stop <-chan struct{}, done func(clientPort int)) (int, error) {
	var b [1]byte
	for i := 0; i < count; i++ {
		select {
		case <-stop:
			return i, nil
		default:
		}
		c, err := n.Dial("tcp4", ln.Addr().String())
		if err != nil {
			return i, err
		}
		s, err := ln.AcceptTCP()
		if err != nil {
			c.Close()
			return i, err
		}
		if err := c.SetLinger(0); err != nil {
			c.Close()
			s.Close()
			return i, err
		}
		port := c.LocalAddr().(*net.TCPAddr).Port
		c.Close()
		if err := s.SetReadDeadline(time.Now().Add(resetWait)); err != nil {
			s.Close()
			return i, err
		}
		if _, err := s.Read(b[:]); !errors.Is(err, syscall.ECONNRESET) {
			s.Close()
			return i, fmt.Errorf("server end of %d: read: %w; want the client's reset", port, err)
		}
		s.Close()
		if done != nil {
			done(port)
		}
	}
	return count, nil
}

// DumpTimerSlack is how far before its true time a death read off a
// sock_diag timer may land: the dump's time is taken in user space
// before the kernel reads the timer (whole ms of jiffies). A few ms on
// a real machine; under the kernel VMs' emulation the kernel reads it
// tens of ms later (seen: 13 ms on 6.12 under TCG; 55-60 ms under
// arm64's, slower, in the final CI check of 2026-12-03).
func DumpTimerSlack() time.Duration {
	if InKernelVM() && runtime.GOARCH == "arm64" {
		return 100 * time.Millisecond
	}
	if InKernelVM() {
		return 50 * time.Millisecond
	}
	return 10 * time.Millisecond
}

// TCPState is the kernel's state of a connection's socket now
// (TCP_INFO's tcpi_state): CLOSE once it is closed or handed to a
// time-wait socket.
func TCPState(c *net.TCPConn) (probe.State, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return probe.State(info.State), nil
}
