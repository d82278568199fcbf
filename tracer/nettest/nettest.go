// Package nettest gives tcpfsm's privileged tests what they need: a fresh
// network namespace per test, TCP traffic made inside it by the test
// itself or by helper processes, and the rule that decides whether a test
// without BPF privileges skips or fails.
package nettest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// InCI reports whether the tests run in CI, where nothing may skip.
func InCI() bool { return os.Getenv("CI") == "true" }

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
		restore()
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		restore()
		return nil, err
	}
	if err := loopbackUp(); err != nil {
		unix.Close(fd)
		restore()
		return nil, err
	}
	if err := restore(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &NS{fd: fd, Inode: uint32(st.Ino)}, nil
}

func loopbackUp() error {
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
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
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

// IsRefused reports a connection refused by the peer.
func IsRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
