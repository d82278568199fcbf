package probe_test

// Privileged tests of the closes that are not graceful: resets, refused and
// timed-out connects.

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

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
