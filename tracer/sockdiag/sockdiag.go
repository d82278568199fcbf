// Package sockdiag lists the TCP sockets of a network namespace through
// the kernel's sock_diag netlink interface (what ss uses), and finds the
// processes that own sockets through /proc: what the tracer needs to learn
// the connections that existed before it started.
//
// A Dumper is one NETLINK_SOCK_DIAG socket. The kernel answers it with the
// sockets of the network namespace the netlink socket was created in, so
// a Dumper is bound to one namespace for its whole life: Open uses the
// caller's, OpenInNetNS any other. Dump sends a SOCK_DIAG_BY_FAMILY
// request (struct inet_diag_req_v2, NLM_F_DUMP) for IPv4 and then IPv6,
// and decodes the replies by hand into a reused Socket, without
// allocating per socket. ParseMessages is that decoder, exposed so that it
// can be tested and fuzzed on raw bytes without privileges.
//
// Time-wait sockets are not full sockets: when a connection enters
// TIME_WAIT (or, orphaned, FIN_WAIT2) the kernel replaces it with a small
// inet_timewait_sock that lives until its timer fires (60 s). The dump
// reports them with their substate, timer 3 and no inode or uid; see
// Socket.TimeWait.
//
// NetNamespaces lists the network namespaces that processes are in, and
// Owners maps socket inodes to the processes holding them.
package sockdiag

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Socket is one TCP socket of a dump.
type Socket struct {
	// Family is unix.AF_INET or unix.AF_INET6. An IPv6 socket whose two
	// addresses are IPv4-mapped (::ffff:a.b.c.d) is reported as AF_INET
	// with the IPv4 addresses.
	Family uint8
	// State is the kernel's TCP state number (1 ESTABLISHED ... 10
	// LISTEN, 11 CLOSING). A time-wait mini-socket reports its substate:
	// TIME_WAIT (6), or FIN_WAIT2 (5) for an orphaned connection whose
	// peer has not closed yet.
	State uint8
	// TimeWait marks a time-wait mini-socket (idiag_timer 3).
	TimeWait bool
	// Saddr and Daddr are the local and remote addresses; IPv4 in the
	// first 4 bytes, the rest zero.
	Saddr, Daddr [16]byte
	// Sport and Dport are the local and remote ports, in host byte order.
	Sport, Dport uint16
	// Inode is the socket's inode, 0 when no file refers to it: time-wait
	// and request sockets, orphaned sockets.
	Inode uint32
	// UID owns the socket (0 for time-wait sockets).
	UID uint32
	// Cookie is the kernel's socket cookie (idiag_cookie), unique for the
	// kernel's uptime; the same value bpf_get_socket_cookie() returns.
	// The kernel assigns it on first use (this dump, BPF, SO_COOKIE); a
	// time-wait mini-socket keeps the cookie of the socket it replaced.
	Cookie uint64
	// Timer is idiag_timer: 0 none, 1 retransmit, 2 keepalive,
	// 3 time-wait, 4 zero window probe.
	Timer uint8
	// ExpiresMs is idiag_expires: milliseconds until the timer fires.
	ExpiresMs uint32
}

// AllStates asks Dump for sockets in every TCP state, ESTABLISHED (1) to
// CLOSING (11). It leaves out bit 13 (TCP_BOUND_INACTIVE,
// Linux 6.8+), which would add sockets that are only bound, reported in
// state CLOSE (7).
const AllStates uint32 = 1<<12 - 2

// recvBufSize fits any dump datagram: netlink_recvmsg() caps the size the
// kernel fills to SKB_WITH_OVERHEAD(32768).
const recvBufSize = 32 << 10

// Dumper is a sock_diag netlink socket, bound to one network namespace.
// It is not safe for concurrent use.
type Dumper struct {
	fd   int
	seq  uint32
	req  [nlmsgHdrLen + reqLen]byte
	buf  []byte
	sock Socket
}

// Open returns a Dumper for the calling goroutine's network namespace,
// which is the process's unless the goroutine is locked to a thread that
// moved.
func Open() (*Dumper, error) {
	fd, err := newSocket()
	if err != nil {
		return nil, fmt.Errorf("sockdiag: %w", err)
	}
	return newDumper(fd)
}

// OpenInNetNS returns a Dumper for the network namespace nsPath names
// (/proc/PID/ns/net, /run/netns/NAME, /proc/PID/fd/N of a namespace fd).
// It needs CAP_SYS_ADMIN. The netlink socket is made by a thread that
// enters the namespace and then returns to its own.
func OpenInNetNS(nsPath string) (*Dumper, error) {
	// The caller's own namespace needs no setns, and so no CAP_SYS_ADMIN.
	if same, err := sameNetNS(nsPath); err == nil && same {
		return Open()
	}
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	// A fresh goroutine locked to its thread: should the thread fail to
	// get back to its namespace, the goroutine exits still locked and
	// the runtime kills the thread, rather than run other goroutines in
	// the wrong namespace.
	go func() {
		runtime.LockOSThread()
		fd, restored, err := socketInNetNS(nsPath)
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- result{fd, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, fmt.Errorf("sockdiag: open in network namespace %s: %w", nsPath, r.err)
	}
	return newDumper(r.fd)
}

// sameNetNS reports whether nsPath is the calling thread's namespace.
func sameNetNS(nsPath string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Stat(nsPath, &a); err != nil {
		return false, err
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &b); err != nil {
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// socketInNetNS makes a netlink socket in the namespace at nsPath from the
// calling thread, which must be locked. restored is false when the thread
// is left in another namespace.
func socketInNetNS(nsPath string) (fd int, restored bool, err error) {
	target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, true, err
	}
	defer unix.Close(target)
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, true, fmt.Errorf("open own network namespace: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		// EINVAL: nsPath is not a network namespace.
		return -1, true, fmt.Errorf("setns: %w", err)
	}
	fd, serr := newSocket()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		if serr == nil {
			unix.Close(fd)
		}
		return -1, false, fmt.Errorf("return to own network namespace: %w", err)
	}
	return fd, true, serr
}

func newSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return -1, fmt.Errorf("netlink socket: %w", err)
	}
	return fd, nil
}

func newDumper(fd int) (*Dumper, error) {
	// The kernel queues the next part of a dump while returning the
	// previous one, so a reply never stalls; the timeout only keeps a
	// kernel that breaks that from hanging Dump.
	tv := unix.Timeval{Sec: 10}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("sockdiag: set receive timeout: %w", err)
	}
	return &Dumper{fd: fd, buf: make([]byte, recvBufSize)}, nil
}

// Close closes the netlink socket. Closing twice is harmless.
func (d *Dumper) Close() error {
	if d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	if err != nil {
		return fmt.Errorf("sockdiag: close: %w", err)
	}
	return nil
}

var errClosed = errors.New("sockdiag: dumper is closed")

// Dump calls fn for each TCP socket, IPv4 then IPv6, whose state is in
// the bitmask states (1<<state; a time-wait socket matches by its
// substate; AllStates for all). A socket in SYN_RECV selects the request
// sockets of listeners too. The *Socket passed to fn is reused for the
// next socket. An error from fn stops the dump and is returned wrapped;
// fn must not call Dump.
//
// The sockets come from the kernel's hash tables one bucket at a time:
// a socket that changes state or is created during the dump may be missed
// or reported twice.
func (d *Dumper) Dump(states uint32, fn func(*Socket) error) error {
	if d.fd < 0 {
		return errClosed
	}
	for _, family := range [...]uint8{unix.AF_INET, unix.AF_INET6} {
		if err := d.dump(family, states, fn); err != nil {
			name := "IPv4"
			if family == unix.AF_INET6 {
				name = "IPv6"
			}
			return fmt.Errorf("sockdiag: dump %s sockets: %w", name, err)
		}
	}
	return nil
}

func (d *Dumper) dump(family uint8, states uint32, fn func(*Socket) error) error {
	d.seq++
	if d.seq == 0 { // 0 would accept any sequence number
		d.seq = 1
	}
	d.fillRequest(family, states)
	// An unconnected netlink socket sends to the kernel.
	if _, err := unix.Write(d.fd, d.req[:]); err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	for {
		n, err := d.recv(0)
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				err = fmt.Errorf("netlink receive queue overrun, dump incomplete: %w", err)
			}
			d.drain()
			return err
		}
		done, err := parseMessages(d.buf[:n], d.seq, &d.sock, fn)
		if err != nil {
			if !done {
				d.drain()
			}
			return err
		}
		if done {
			return nil
		}
	}
}

// fillRequest writes an nlmsghdr and a struct inet_diag_req_v2 for a dump
// of TCP sockets of family in states, with no extensions.
func (d *Dumper) fillRequest(family uint8, states uint32) {
	b := d.req[:]
	clear(b)
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(b[8:], d.seq)
	r := b[nlmsgHdrLen:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], states)
}

// drain reads and drops the rest of an abandoned reply. Without it the
// next request would read this one's leftovers, or fail with EBUSY: a
// netlink socket runs one dump at a time. It reads without waiting: the
// kernel queues each part of a dump before returning the previous one, so
// an empty queue means the dump is over.
func (d *Dumper) drain() {
	for {
		n, err := d.recv(unix.MSG_DONTWAIT)
		if errors.Is(err, unix.ENOBUFS) {
			continue
		}
		if err != nil {
			return
		}
		if done, _ := parseMessages(d.buf[:n], d.seq, &d.sock, nil); done {
			return
		}
	}
}

// recv reads one datagram into d.buf. It calls recvfrom directly because
// unix.Recvfrom allocates the sender's address on every call.
func (d *Dumper) recv(flags int) (int, error) {
	for {
		// MSG_TRUNC: return the datagram's real length, to detect one
		// that did not fit.
		n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(d.fd),
			uintptr(unsafe.Pointer(&d.buf[0])), uintptr(len(d.buf)),
			uintptr(flags|unix.MSG_TRUNC), 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN && flags&unix.MSG_DONTWAIT == 0:
			return 0, fmt.Errorf("no reply from the kernel within the receive timeout: %w", e)
		case e != 0:
			return 0, fmt.Errorf("receive: %w", e)
		case int(n) > len(d.buf):
			return 0, fmt.Errorf("%w: datagram of %d bytes does not fit the %d-byte buffer", ErrMalformed, n, len(d.buf))
		}
		return int(n), nil
	}
}
