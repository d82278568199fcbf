package probe_test

// Privileged end-to-end tests: the real BPF programs on the running kernel,
// each test in its own network namespace with traffic it makes itself.
// Without privileges they skip, except in CI (CI=true), where they fail.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
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

// (c) close with SO_LINGER 0: a RST, both ends go straight to CLOSE.
func TestResetAbort(t *testing.T) {
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	col := openProbe(t, probe.Options{Filter: probe.Filter{NetNS: ns.Inode}})
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	srvPort := port(ln.Addr())
	readErr := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		close(ready)
		if err != nil {
			readErr <- err
			return
		}
		defer c.Close()
		_, err = io.Copy(io.Discard, c)
		readErr <- err
	}()
	c, err := ns.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cliPort := port(c.LocalAddr())
	<-ready
	if err := c.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-readErr; err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("server read: got %v, want connection reset", err)
	}
	ln.Close()
	col.WaitFor(t, "all closed", func(ev []probe.Event) bool {
		return nettest.Closed(ev, srvPort, cliPort) && nettest.Closed(ev, cliPort, srvPort) && nettest.Closed(ev, srvPort, 0)
	})
	ep := splitConns(t, col.Stop(t), srvPort)
	// close() with SO_LINGER 0 moves to CLOSE first and sends the RST
	// after: the reset still names the connection.
	wantAll(t, "client", ep.client, []string{"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->CLOSE", "reset_sent@CLOSE"})
	wantAll(t, "server", ep.server, []string{"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "reset_received@ESTABLISHED", "ESTABLISHED->CLOSE"})
	if e := ep.server.States()[2]; e.SkErr != uint16(syscall.ECONNRESET) {
		t.Errorf("server CLOSE: socket error %d, want ECONNRESET", e.SkErr)
	}
	if e := ep.client.States()[2]; e.SkErr != 0 {
		t.Errorf("client CLOSE: socket error %d, want 0", e.SkErr)
	}
}

// (c') many RST-closed connections one after another: the kernel hands a
// socket's memory to the next connection (often the very next one), and
// each reset must still name its own connection, not an earlier one that
// had the same socket address.
func TestResetsOfReusedSockets(t *testing.T) {
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	col := openProbe(t, probe.Options{Filter: probe.Filter{NetNS: ns.Inode}})
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	srvPort := port(ln.Addr())
	const n = 50
	var cliPorts []uint16
	if _, err := ns.Churn(ln, n, nil, func(p int) { cliPorts = append(cliPorts, uint16(p)) }); err != nil {
		t.Fatal(err)
	}
	ln.Close()
	col.WaitFor(t, "the listener closed", func(ev []probe.Event) bool { return nettest.Closed(ev, srvPort, 0) })
	byPorts := map[[2]uint16]*nettest.Conn{}
	for _, c := range nettest.Conns(col.Stop(t)) {
		e := &c.Events[0]
		for i := range c.Events {
			if x := &c.Events[i]; x.Sport != e.Sport || x.Dport != e.Dport {
				t.Errorf("connection %d holds events of two sockets:\n%s", c.ID, nettest.Dump(c.Events))
				break
			}
		}
		byPorts[[2]uint16{e.Sport, e.Dport}] = c
	}
	if len(byPorts) != 2*n+1 {
		t.Errorf("%d connections, want %d clients, %d accepted and the listener", len(byPorts), n, n)
	}
	for _, p := range cliPorts {
		for _, side := range []struct {
			who   string
			ports [2]uint16
			want  []string
		}{
			{"client", [2]uint16{p, srvPort}, []string{"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->CLOSE", "reset_sent@CLOSE"}},
			{"server", [2]uint16{srvPort, p}, []string{"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "reset_received@ESTABLISHED", "ESTABLISHED->CLOSE"}},
		} {
			c := byPorts[side.ports]
			if c == nil {
				t.Errorf("no %s connection %d -> %d", side.who, side.ports[0], side.ports[1])
				continue
			}
			wantAll(t, fmt.Sprintf("%s %d -> %d", side.who, side.ports[0], side.ports[1]), c, side.want)
		}
	}
}

func wantAll(t *testing.T, who string, c *nettest.Conn, want []string) {
	t.Helper()
	if got := c.All(); !slices.Equal(got, want) {
		t.Errorf("%s events:\n got  %v\n want %v\n%s", who, got, want, nettest.Dump(c.Events))
	}
}

// (d) a refused connect: SYN_SENT straight to CLOSE, with the real local port.
func TestRefusedConnect(t *testing.T) {
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	col := openProbe(t, probe.Options{Filter: probe.Filter{NetNS: ns.Inode}})
	// Nothing listens in a fresh namespace.
	_, err := ns.Dial("tcp4", "127.0.0.1:1")
	if !nettest.IsRefused(err) {
		t.Fatalf("dial: got %v, want connection refused", err)
	}
	col.WaitFor(t, "the connect to end", func(ev []probe.Event) bool { return len(ev) >= 3 })
	events := col.Stop(t)
	conns := nettest.Conns(events)
	if len(conns) != 1 {
		t.Fatalf("want 1 connection, got %d:\n%s", len(conns), nettest.Dump(events))
	}
	wantAll(t, "client", conns[0], []string{"CLOSE->SYN_SENT", "reset_received@SYN_SENT", "SYN_SENT->CLOSE"})
	syn, closed := &conns[0].Events[0], &conns[0].Events[2]
	if closed.SkErr != uint16(syscall.ECONNREFUSED) {
		t.Errorf("CLOSE: socket error %d, want ECONNREFUSED", closed.SkErr)
	}
	if syn.Sport == 0 || syn.Sport != closed.Sport {
		t.Errorf("local port: SYN_SENT %d, CLOSE %d; want the same non-zero port", syn.Sport, closed.Sport)
	}
	if syn.Dport != 1 || closed.Dport != 1 {
		t.Errorf("remote port: %d and %d, want 1", syn.Dport, closed.Dport)
	}
	if closed.TxBytes() != 0 || closed.RxBytes() != 0 {
		t.Errorf("refused connection moved bytes: tx %d rx %d", closed.TxBytes(), closed.RxBytes())
	}
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

// filterCase is a filtered probe beside the unfiltered one: it must see
// exactly the unfiltered events the predicate selects.
type filterCase struct {
	name   string
	filter func(env *filterEnv) probe.Filter
	want   func(env *filterEnv, e *probe.Event) bool
}

// filterEnv is the traffic of the filter tests, all in one namespace: an
// IPv4 and an IPv6 exchange between helper processes (the IPv4 client in
// a cgroup of its own) and an IPv4 exchange inside the test process.
type filterEnv struct {
	ns          *nettest.NS
	srv4, srv6  *nettest.Peer
	cli4, cli6  *nettest.Peer
	cgroup      string
	cgroupID    uint64
	cgroupLevel uint32
}

// Fixed ports: nothing else listens in a fresh namespace, and the
// filtered probe must be loaded before the first listen().
const port4, port6, portSelf = 20004, 20006, 20008

// (f) every kernel filter passes exactly the events it should. The seven
// filtered probes and one unfiltered probe watch the same traffic at the
// same time, and each filtered probe is compared with the unfiltered
// probe's events the predicate selects. Every filter is its own load (the
// filters are constants compiled into the program); the eight loads are
// most of the test's time in an emulated VM, so the filtered ones load
// concurrently, and one exchange serves them all.
func TestKernelFilters(t *testing.T) {
	nettest.RequireBPF(t)
	cases := []filterCase{
		{"lport", func(env *filterEnv) probe.Filter { return probe.Filter{LocalPorts: []uint16{port4, 1}} },
			func(env *filterEnv, e *probe.Event) bool { return e.Sport == port4 }},
		{"rport", func(env *filterEnv) probe.Filter { return probe.Filter{RemotePorts: []uint16{port6, portSelf}} },
			func(env *filterEnv, e *probe.Event) bool { return e.Dport == port6 || e.Dport == portSelf }},
		{"ipv6", func(env *filterEnv) probe.Filter { return probe.Filter{Family: probe.AFInet6} },
			func(env *filterEnv, e *probe.Event) bool { return e.Family == probe.AFInet6 }},
		{"ipv4", func(env *filterEnv) probe.Filter { return probe.Filter{Family: probe.AFInet} },
			func(env *filterEnv, e *probe.Event) bool { return e.Family == probe.AFInet }},
		{"pid", func(env *filterEnv) probe.Filter { return probe.Filter{PID: uint32(env.srv4.Pid)} },
			func(env *filterEnv, e *probe.Event) bool { return int(e.Pid) == env.srv4.Pid }},
		{"cgroup", func(env *filterEnv) probe.Filter {
			return probe.Filter{CgroupID: env.cgroupID, CgroupLevel: env.cgroupLevel}
		}, func(env *filterEnv, e *probe.Event) bool { return int(e.Pid) == env.cli4.Pid }},
		{"other-netns", func(env *filterEnv) probe.Filter { return probe.Filter{NetNS: 1} },
			func(env *filterEnv, e *probe.Event) bool { return false }},
	}
	ns := nettest.NewNS(t)
	env := &filterEnv{ns: ns}
	env.cgroup, env.cgroupID, env.cgroupLevel = makeCgroup(t)
	all := openProbe(t, probe.Options{Filter: probe.Filter{NetNS: ns.Inode}})
	filtered := make([]*nettest.Collector, len(cases))
	env.runTraffic(t, all, func() {
		probes := make([]*probe.Probe, len(cases))
		errs := make([]error, len(cases))
		var wg sync.WaitGroup
		for i, tc := range cases {
			f := tc.filter(env)
			if f.NetNS == 0 {
				f.NetNS = ns.Inode
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				probes[i], errs[i] = probe.Open(probe.Options{Filter: f})
			}()
		}
		wg.Wait()
		for i, p := range probes {
			if p != nil {
				filtered[i] = nettest.Collect(t, p)
			}
		}
		for i, err := range errs {
			if err != nil {
				t.Fatalf("open the %s probe: %v", cases[i].name, err)
			}
		}
	})
	// The traffic is over (every socket of it closed, the TIME_WAITs
	// last a minute longer): stopping the probes one after another loses
	// nothing any of them would have seen.
	got := make([][]probe.Event, len(cases))
	for i, c := range filtered {
		got[i] = c.Stop(t)
	}
	seen := all.Stop(t)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var want []probe.Event
			for j := range seen {
				if tc.want(env, &seen[j]) {
					want = append(want, seen[j])
				}
			}
			if tc.name != "other-netns" && (len(want) == 0 || len(want) == len(seen)) {
				t.Fatalf("the traffic does not exercise this filter: %d of %d events selected:\n%s", len(want), len(seen), nettest.Dump(seen))
			}
			if !sameEvents(got[i], want) {
				t.Errorf("filtered probe saw:\n%swant:\n%s", nettest.Dump(got[i]), nettest.Dump(want))
			}
		})
	}
}

// runTraffic starts held helpers, lets open load the filtered probe (a
// pid filter needs their pids), then makes the three exchanges and waits
// until the unfiltered probe saw every socket close.
func (env *filterEnv) runTraffic(t *testing.T, all *nettest.Collector, open func()) {
	t.Helper()
	ns := env.ns
	helper := func(comm, role, network, addr string, send int, cgroup string) *nettest.Peer {
		return ns.StartHelper(t, nettest.Helper{Comm: comm, Role: role, Network: network, Addr: addr, Send: send, Cgroup: cgroup, Hold: true})
	}
	env.srv4 = helper("tcpfsm-srv4", "server", "tcp4", "127.0.0.1:"+strconv.Itoa(port4), 100, "")
	env.srv6 = helper("tcpfsm-srv6", "server", "tcp6", "[::1]:"+strconv.Itoa(port6), 200, "")
	env.cli4 = helper("tcpfsm-cli4", "client", "tcp4", "127.0.0.1:"+strconv.Itoa(port4), 10, env.cgroup)
	env.cli6 = helper("tcpfsm-cli6", "client", "tcp6", "[::1]:"+strconv.Itoa(port6), 20, "")
	open()

	for _, srv := range []*nettest.Peer{env.srv4, env.srv6} {
		srv.Release(t)
		srv.Port(t) // listening
	}
	env.cli4.Release(t)
	env.cli6.Release(t)

	ln := ns.Listen(t, "tcp4", "127.0.0.1:"+strconv.Itoa(portSelf))
	go func() {
		if c, err := ln.Accept(); err == nil {
			// To the client's close; the transitions are what is checked.
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := ns.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	for _, p := range []*nettest.Peer{env.cli4, env.cli6, env.srv4, env.srv6} {
		p.Done(t)
	}
	all.WaitFor(t, "all sockets closed", func(ev []probe.Event) bool {
		n := 0
		for i := range ev {
			if ev[i].EventType() == probe.TypeState && ev[i].NewState() == probe.StateClose {
				n++
			}
		}
		return n >= 8 // two helper listeners, three clients, three accepted
	})
	ln.Close()
	all.WaitFor(t, "the last listener closed", func(ev []probe.Event) bool { return nettest.Closed(ev, portSelf, 0) })
}

// makeCgroup creates a cgroup v2 for the test and returns its directory,
// id and level.
func makeCgroup(t *testing.T) (string, uint64, uint32) {
	root, err := cgroups.Mount()
	if err != nil {
		t.Fatalf("cgroup v2: %v", err)
	}
	dir, err := os.MkdirTemp(root, "tcpfsm-test-")
	if err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The helpers in it have exited by now; rmdir fails while any lives.
		for i := 0; i < 50 && os.Remove(dir) != nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	})
	id, level, err := probe.CgroupFilter(filepath.Base(dir))
	if err != nil {
		t.Fatal(err)
	}
	return dir, id, level
}

// sameEvents compares what two probes saw of the same traffic. Each probe
// numbers connections and reads the clock on its own, and events from
// different CPUs may be ordered differently in their rings, so compare
// the rest of every event as a multiset. Also each probe's own: how it
// learned an owner (the pid and comm are compared). Where the kernel runs
// fexit/inet_csk_accept, every probe's program runs in turn when accept()
// returns (the one attached first last), and the client's FIN may move
// the accepted socket to CLOSE_WAIT in between: probes whose program ran
// already say the owner was carried from accept, the others that it came
// from the listener (seen on x86-64 6.1 with eight probes attached).
func sameEvents(a, b []probe.Event) bool {
	if len(a) != len(b) {
		return false
	}
	key := func(e probe.Event) string {
		e.ConnId, e.TsNs, e.DeltaNs, e.Owner = 0, 0, 0, 0
		return string(e.Bytes())
	}
	count := map[string]int{}
	for _, e := range a {
		count[key(e)]++
	}
	for _, e := range b {
		count[key(e)]--
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return true
}

// A connect whose SYNs are dropped (its listener's accept queue is full):
// SYN retransmits, then ETIMEDOUT.
func TestConnectTimeout(t *testing.T) {
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	col := openProbe(t, probe.Options{Filter: probe.Filter{NetNS: ns.Inode}})
	ln := ns.ListenBacklog(t, "127.0.0.1:9999", 0)
	queued, err := ns.Dial("tcp4", "127.0.0.1:9999")
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()
	queuedPort := port(queued.LocalAddr())
	// Two tries (TCP_SYNCNT 1): the SYN, its retransmit after 1s, the
	// timeout about 3s after the start.
	start := time.Now()
	_, err = ns.DialSynCount("tcp4", "127.0.0.1:9999", 1)
	if !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("dial: got %v, want a timeout", err)
	}
	if d := time.Since(start); d < 2*time.Second || d > 10*time.Second {
		t.Errorf("connect gave up after %s, want about 3s", d)
	}
	ln.Close()
	col.WaitFor(t, "the connect to close", func(ev []probe.Event) bool {
		for i := range ev {
			if ev[i].NewState() == probe.StateClose && ev[i].Dport == 9999 && ev[i].Sport != queuedPort {
				return true
			}
		}
		return false
	})
	var c *nettest.Conn
	for _, x := range nettest.Conns(col.Stop(t)) {
		if x.Events[0].Dport == 9999 && x.Events[0].Sport != queuedPort {
			c = x
		}
	}
	if c == nil {
		t.Fatal("no connection for the timed-out connect")
	}
	// Each SYN retransmit is an event; the count agrees with the kernel's.
	all := c.All()
	retrans := len(all) - 2
	if len(all) < 3 || all[0] != "CLOSE->SYN_SENT" || all[len(all)-1] != "SYN_SENT->CLOSE" ||
		slices.ContainsFunc(all[1:len(all)-1], func(s string) bool { return s != "syn_retransmit@SYN_SENT" }) {
		t.Errorf("events %v, want CLOSE->SYN_SENT, SYN retransmits, SYN_SENT->CLOSE", all)
	}
	closed := &c.Events[len(c.Events)-1]
	if closed.SkErr != uint16(syscall.ETIMEDOUT) || int(closed.TotalRetrans) != retrans {
		t.Errorf("CLOSE: socket error %d, %d retransmits; want ETIMEDOUT and %d", closed.SkErr, closed.TotalRetrans, retrans)
	}
	if gap := time.Duration(c.Events[1].TsNs - c.Events[0].TsNs); gap < 900*time.Millisecond || gap > 2*time.Second {
		t.Errorf("SYN retransmitted %s after connect, want about 1s", gap)
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
