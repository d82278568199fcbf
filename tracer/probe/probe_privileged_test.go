package probe_test

// Privileged end-to-end tests: the real BPF programs on the running kernel,
// each test in its own network namespace with traffic it makes itself.
// Without privileges they skip, except in CI (CI=true), where they fail.

import (
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

func TestMain(m *testing.M) {
	nettest.RunHelperIfAsked()
	os.Exit(m.Run())
}

// openProbe loads the programs filtered to the test's namespace.
func openProbe(t *testing.T, opts probe.Options) *nettest.Collector {
	t.Helper()
	nettest.RequireBPF(t)
	p, err := probe.Open(opts)
	if err != nil {
		t.Fatalf("open probe: %v", err)
	}
	if opts.Attach != probe.AttachAuto && opts.Attach != "" && p.Attached() != opts.Attach {
		t.Fatalf("attached %s, asked for %s", p.Attached(), opts.Attach)
	}
	return nettest.Collect(t, p)
}

var (
	clientCloseFirst = []string{"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE"}
	serverCloseFirst = []string{"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE"}
	listenerLife     = []string{"CLOSE->LISTEN", "LISTEN->CLOSE"}
)

func port(a net.Addr) uint16 { return uint16(a.(*net.TCPAddr).Port) }

// endpoints are the three sockets of a loopback exchange.
type endpoints struct {
	listener, client, server *nettest.Conn
}

// splitConns finds the listener, the client and the accepted socket for a
// server port, and fails on any other connection.
func splitConns(t *testing.T, events []probe.Event, srvPort uint16) endpoints {
	t.Helper()
	var ep endpoints
	for _, c := range nettest.Conns(events) {
		first := &c.Events[0]
		switch {
		case first.Sport == srvPort && first.Dport == 0 && ep.listener == nil:
			ep.listener = c
		case first.Dport == srvPort && ep.client == nil:
			ep.client = c
		case first.Sport == srvPort && first.Dport != 0 && ep.server == nil:
			ep.server = c
		default:
			t.Errorf("unexpected connection %d:\n%s", c.ID, nettest.Dump(c.Events))
		}
	}
	if ep.listener == nil || ep.client == nil || ep.server == nil {
		t.Fatalf("want listener, client and server connections for port %d; events:\n%s", srvPort, nettest.Dump(events))
	}
	return ep
}

func wantTransitions(t *testing.T, who string, c *nettest.Conn, want []string) {
	t.Helper()
	if got := c.Transitions(); !slices.Equal(got, want) {
		t.Errorf("%s transitions:\n got  %v\n want %v\n%s", who, got, want, nettest.Dump(c.Events))
	}
}

// wantEndpoints checks every event's addresses and ports.
func wantEndpoints(t *testing.T, who string, c *nettest.Conn, family uint8, laddr, raddr string, lport, rport uint16) {
	t.Helper()
	for i := range c.Events {
		e := &c.Events[i]
		lp, rp := lport, rport
		ra := raddr
		if e.OldState() == probe.StateListen && e.NewState() == probe.StateClose || e.NewState() == probe.StateListen {
			rp, ra = 0, unspecified(family)
		}
		if e.Family != family || e.LocalAddr().String() != laddr || e.RemoteAddr().String() != ra ||
			e.Sport != lp || e.Dport != rp {
			t.Errorf("%s event %s: got family %d %s:%d -> %s:%d, want family %d %s:%d -> %s:%d",
				who, nettest.Transition(e), e.Family, e.LocalAddr(), e.Sport, e.RemoteAddr(), e.Dport,
				family, laddr, lp, ra, rp)
		}
	}
}

func unspecified(family uint8) string {
	if family == probe.AFInet {
		return "0.0.0.0"
	}
	return "::"
}

// wantOwner checks that every event names the given process.
func wantOwner(t *testing.T, who string, c *nettest.Conn, pid int, comm string) {
	t.Helper()
	for i := range c.Events {
		e := &c.Events[i]
		if !e.OwnerKnown() || int(e.Pid) != pid || string(e.CommBytes()) != comm {
			t.Errorf("%s event %s: owner %s pid %d comm %q, want pid %d comm %q",
				who, nettest.Transition(e), e.OwnerSource(), e.Pid, e.CommBytes(), pid, comm)
		}
	}
}

func selfComm(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// exchange runs one connection over loopback inside ns: the client sends
// clientSends bytes, then the side that closes first closes, the other
// reads to EOF and closes. It returns the server and client ports.
func exchange(t *testing.T, ns *nettest.NS, col *nettest.Collector, network, addr string, serverFirst bool) (srvPort, cliPort uint16) {
	t.Helper()
	ln := ns.Listen(t, network, addr)
	srvPort = port(ln.Addr())
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- err
			return
		}
		defer c.Close()
		if serverFirst {
			_, err = c.Write([]byte("hello from the server"))
			accepted <- err
			return
		}
		_, err = io.Copy(io.Discard, c)
		accepted <- err
	}()
	c, err := ns.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	cliPort = port(c.LocalAddr())
	if serverFirst {
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("client read: %v", err)
		}
		// The server's FIN must be acked (FIN_WAIT2) before the client's
		// FIN arrives, or the close becomes simultaneous.
		col.WaitFor(t, "server in FIN_WAIT2", func(ev []probe.Event) bool {
			return hasTransition(ev, srvPort, cliPort, probe.StateFinWait2)
		})
	} else if _, err := c.Write([]byte("hello from the client")); err != nil {
		t.Fatalf("client write: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("client close: %v", err)
	}
	if err := <-accepted; err != nil {
		t.Fatalf("server: %v", err)
	}
	ln.Close()
	col.WaitFor(t, "all three sockets closed", func(ev []probe.Event) bool {
		return nettest.Closed(ev, srvPort, cliPort) && nettest.Closed(ev, cliPort, srvPort) &&
			nettest.Closed(ev, srvPort, 0)
	})
	return srvPort, cliPort
}

func hasTransition(events []probe.Event, lport, rport uint16, to probe.State) bool {
	for i := range events {
		if e := &events[i]; e.Sport == lport && e.Dport == rport && e.NewState() == to {
			return true
		}
	}
	return false
}

// (a) normal close, client first, on both hooks; (e) the same over IPv6.
func TestNormalCloseClientFirst(t *testing.T) {
	cases := []struct {
		name    string
		attach  probe.Attach
		network string
		addr    string
		family  uint8
		ip      string
	}{
		{"raw_tracepoint", probe.AttachRaw, "tcp4", "127.0.0.1:0", probe.AFInet, "127.0.0.1"},
		{"tracepoint", probe.AttachTracepoint, "tcp4", "127.0.0.1:0", probe.AFInet, "127.0.0.1"},
		{"ipv6", probe.AttachAuto, "tcp6", "[::1]:0", probe.AFInet6, "::1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nettest.RequireBPF(t)
			ns := nettest.NewNS(t)
			col := openProbe(t, probe.Options{Attach: tc.attach, Filter: probe.Filter{NetNS: ns.Inode}})
			srvPort, cliPort := exchange(t, ns, col, tc.network, tc.addr, false)
			events := col.Stop(t)

			ep := splitConns(t, events, srvPort)
			wantTransitions(t, "client", ep.client, clientCloseFirst)
			wantTransitions(t, "server", ep.server, serverCloseFirst)
			wantTransitions(t, "listener", ep.listener, listenerLife)
			wantEndpoints(t, "client", ep.client, tc.family, tc.ip, tc.ip, cliPort, srvPort)
			wantEndpoints(t, "server", ep.server, tc.family, tc.ip, tc.ip, srvPort, cliPort)
			wantEndpoints(t, "listener", ep.listener, tc.family, tc.ip, tc.ip, srvPort, 0)

			// connect() sets SYN_SENT before it picks the port: that event
			// is held back until the port is known.
			if syn := &ep.client.Events[0]; !syn.Deferred() {
				t.Errorf("CLOSE->SYN_SENT not flagged deferred: flags %#x", syn.Flags)
			}
			for _, c := range []*nettest.Conn{ep.client, ep.server, ep.listener} {
				if got, want := c.All(), c.Transitions(); !slices.Equal(got, want) {
					t.Errorf("a normal close has only state events, got %v", got)
				}
				if last := c.Events[len(c.Events)-1]; last.SkErr != 0 {
					t.Errorf("normal close with socket error %d", last.SkErr)
				}
				for i := range c.Events {
					e := &c.Events[i]
					if e.Netns != ns.Inode {
						t.Errorf("event %s: netns %d, want %d", nettest.Transition(e), e.Netns, ns.Inode)
					}
					if e.Partial() {
						t.Errorf("event %s flagged partial", nettest.Transition(e))
					}
					if i > 0 && e.TsNs < c.Events[i-1].TsNs {
						t.Errorf("event %s earlier than the one before it", nettest.Transition(e))
					}
					// Time in the old state is the gap to the previous event.
					if i > 0 && e.DeltaNs != e.TsNs-c.Events[i-1].TsNs {
						t.Errorf("event %s: old state lasted %d ns, events are %d ns apart",
							nettest.Transition(e), e.DeltaNs, e.TsNs-c.Events[i-1].TsNs)
					}
				}
			}
			// The test process owns all three sockets.
			comm := selfComm(t)
			wantOwner(t, "client", ep.client, os.Getpid(), comm)
			wantOwner(t, "server", ep.server, os.Getpid(), comm)
			wantOwner(t, "listener", ep.listener, os.Getpid(), comm)
		})
	}
}

// (b) the server closes first: the roles of the four-way close swap.
func TestNormalCloseServerFirst(t *testing.T) {
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	col := openProbe(t, probe.Options{Filter: probe.Filter{NetNS: ns.Inode}})
	srvPort, _ := exchange(t, ns, col, "tcp4", "127.0.0.1:0", true)
	ep := splitConns(t, col.Stop(t), srvPort)
	wantTransitions(t, "client", ep.client, []string{"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE"})
	wantTransitions(t, "server", ep.server, []string{"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE"})
	wantTransitions(t, "listener", ep.listener, listenerLife)
}

// An IPv6 socket talking to IPv4 through a mapped address is shown as IPv4.
func TestIPv4MappedShownAsIPv4(t *testing.T) {
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	col := openProbe(t, probe.Options{Filter: probe.Filter{NetNS: ns.Inode}})
	// A dual-stack listener accepts the IPv4 client on an IPv6 socket.
	ln := ns.Listen(t, "tcp", "[::]:0")
	srvPort := port(ln.Addr())
	go func() {
		if c, err := ln.Accept(); err == nil {
			// To the client's close; the transitions are what is checked.
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := ns.Dial("tcp4", "127.0.0.1:"+strconv.Itoa(int(srvPort)))
	if err != nil {
		t.Fatal(err)
	}
	cliPort := port(c.LocalAddr())
	c.Close()
	col.WaitFor(t, "accepted socket closed", func(ev []probe.Event) bool { return nettest.Closed(ev, srvPort, cliPort) })
	ln.Close()
	col.WaitFor(t, "listener closed", func(ev []probe.Event) bool { return nettest.Closed(ev, srvPort, 0) })
	ep := splitConns(t, col.Stop(t), srvPort)
	wantEndpoints(t, "server", ep.server, probe.AFInet, "127.0.0.1", "127.0.0.1", srvPort, cliPort)
	wantEndpoints(t, "listener", ep.listener, probe.AFInet6, "::", "::", srvPort, 0)
}

// (g) owners: a server and a client in two other processes. On loopback
// the client's syscalls drive the server's packet-driven transitions in
// softirq, so the task on the CPU is the wrong answer for the server.
// (h) bytes: what each side sent and received, at close.
func TestOwnersAndBytesAcrossProcesses(t *testing.T) {
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	col := openProbe(t, probe.Options{Filter: probe.Filter{NetNS: ns.Inode}})

	const cliSends, srvSends = 12345, 54321
	srv := ns.StartHelper(t, nettest.Helper{Comm: "tcpfsm-srv", Role: "server", Network: "tcp4", Addr: "127.0.0.1:0", Send: srvSends})
	srvPort := uint16(srv.Port(t))
	cli := ns.StartHelper(t, nettest.Helper{Comm: "tcpfsm-cli", Role: "client", Network: "tcp4", Addr: "127.0.0.1:" + strconv.Itoa(int(srvPort)), Send: cliSends})
	if got := cli.Done(t); got != srvSends {
		t.Fatalf("client received %d bytes, want %d", got, srvSends)
	}
	if got := srv.Done(t); got != cliSends {
		t.Fatalf("server received %d bytes, want %d", got, cliSends)
	}
	col.WaitFor(t, "listener closed", func(ev []probe.Event) bool { return nettest.Closed(ev, srvPort, 0) })
	col.WaitFor(t, "both ends closed", func(ev []probe.Event) bool {
		n := 0
		for i := range ev {
			if ev[i].NewState() == probe.StateClose && ev[i].Dport != 0 {
				n++
			}
		}
		return n == 2
	})
	events := col.Stop(t)
	ep := splitConns(t, events, srvPort)
	wantTransitions(t, "client", ep.client, clientCloseFirst)
	wantTransitions(t, "server", ep.server, serverCloseFirst)

	wantOwner(t, "client", ep.client, cli.Pid, "tcpfsm-cli")
	wantOwner(t, "server", ep.server, srv.Pid, "tcpfsm-srv")
	wantOwner(t, "listener", ep.listener, srv.Pid, "tcpfsm-srv")
	// Where each owner came from: the syscall itself, the listener, or an
	// earlier syscall of the same connection.
	wantSources := func(who string, c *nettest.Conn, want []probe.OwnerSource) {
		var got []probe.OwnerSource
		for i := range c.Events {
			got = append(got, c.Events[i].OwnerSource())
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s owner sources: got %v, want %v", who, got, want)
		}
	}
	T, C, L := probe.OwnerTask, probe.OwnerCarried, probe.OwnerListener
	wantSources("client", ep.client, []probe.OwnerSource{T, C, T, C, C})
	if col.Probe().Features().AcceptOwner {
		// fexit on inet_csk_accept: the accepting task owns it from accept().
		wantSources("server", ep.server, []probe.OwnerSource{L, L, C, T, C})
	} else {
		wantSources("server", ep.server, []probe.OwnerSource{L, L, L, T, C})
	}

	last := func(c *nettest.Conn) *probe.Event { return &c.Events[len(c.Events)-1] }
	if e := last(ep.client); e.TxBytes() != cliSends || e.RxBytes() != srvSends {
		t.Errorf("client at close: tx %d rx %d, want tx %d rx %d", e.TxBytes(), e.RxBytes(), cliSends, srvSends)
	} else if e.BytesAcked != cliSends+2 || e.BytesReceived != srvSends+1 {
		// The kernel's counters include SYN and FIN; the flags say so.
		t.Errorf("client raw counters: acked %d received %d", e.BytesAcked, e.BytesReceived)
	}
	if e := last(ep.server); e.TxBytes() != srvSends || e.RxBytes() != cliSends {
		t.Errorf("server at close: tx %d rx %d, want tx %d rx %d", e.TxBytes(), e.RxBytes(), srvSends, cliSends)
	}
	for _, c := range []*nettest.Conn{ep.client, ep.server} {
		if e := last(c); e.SrttUs == 0 || e.SegsIn == 0 || e.SegsOut == 0 {
			t.Errorf("conn %d at close: srtt %dus segs in %d out %d; want all above 0", c.ID, e.SrttUs, e.SegsIn, e.SegsOut)
		}
	}
}

// Which optional programs the kernel accepted. The qemu runs set
// TCPFSM_EXPECT_FENTRY per kernel (.ci/kernels/kernels): 1 where BPF
// trampolines give exact TIME_WAIT and the accepting task as owner (x86-64
// 6.1 and 6.12), 0 where the kernel refuses them (arm64 6.1); a kernel
// without them runs the fallbacks.
func TestKernelFeatures(t *testing.T) {
	nettest.RequireBPF(t)
	p, err := probe.Open(probe.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	f := p.Features()
	t.Logf("kernel %s: hook %s, resets %v, SYN retransmits %v, exact TIME_WAIT %v, accept owner %v; refused: %v",
		probe.KernelRelease(), p.Attached(), f.Resets, f.SynRetransmits, f.TimeWait, f.AcceptOwner, f.Missing)
	if !f.Resets || !f.SynRetransmits {
		t.Errorf("the tcp tracepoints did not attach: %v", f.Missing)
	}
	switch os.Getenv("TCPFSM_EXPECT_FENTRY") {
	case "1":
		if !f.TimeWait || !f.AcceptOwner {
			t.Errorf("this kernel was expected to run the fentry programs: %v", f.Missing)
		}
	case "0":
		if f.TimeWait || f.AcceptOwner {
			t.Errorf("this kernel was expected to refuse the fentry programs")
		}
	}
}
