package main

// What is open now, end to end: a server that never closes holds
// connections its clients closed, in CLOSE_WAIT for a known time, and the
// agent's connections API, its stuck gauges and tcpfsm top (in a real
// terminal, under tmux; and its --once JSON) show exactly those, with
// their owner and ages, as the kernel (sock_diag) has them.

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/tcpfsm/tcpfsm/exporter/connview"
	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/sockdiag"
)

// closeWaitScene is the traffic: a holder (comm "cwholder") accepted
// closing+open connections from this process; the clients of the first
// closing ones closed in two groups 1.5 s apart, each client sending a
// different number of bytes first; the open ones stay ESTABLISHED.
type closeWaitScene struct {
	ns     *nettest.NS
	holder *nettest.Peer
	port   int // the holder's
	// closed clients' ports, in the order they closed, with when they
	// closed and what they sent.
	closed   []int
	closedAt map[int]time.Time
	sent     map[int]int
	open     []*net.TCPConn
}

const (
	closeWaitN   = 6 // in two groups of 3
	closeWaitOpn = 2
)

func newCloseWaitScene(t *testing.T, ns *nettest.NS) *closeWaitScene {
	t.Helper()
	s := &closeWaitScene{ns: ns, closedAt: map[int]time.Time{}, sent: map[int]int{}}
	s.holder = ns.StartHelper(t, nettest.Helper{Comm: "cwholder", Role: "holder", Network: "tcp4", Addr: "127.0.0.1:0",
		Send: closeWaitN + closeWaitOpn})
	s.port = s.holder.Port(t)
	addr := fmt.Sprintf("127.0.0.1:%d", s.port)
	var conns []*net.TCPConn
	for i := 0; i < closeWaitN+closeWaitOpn; i++ {
		c, err := ns.Dial("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if line := s.holder.Line(t); line != fmt.Sprintf("accepted %d", closeWaitN+closeWaitOpn) {
		t.Fatalf("holder: %q", line)
	}
	s.open = conns[closeWaitN:]
	t.Cleanup(func() {
		for _, c := range s.open {
			c.Close()
		}
	})
	for i, c := range conns[:closeWaitN] {
		if i == closeWaitN/2 {
			time.Sleep(1500 * time.Millisecond)
		}
		port := c.LocalAddr().(*net.TCPAddr).Port
		// Later closes send more: bytes order them the other way round.
		n := 1000 * (i + 1)
		if _, err := c.Write(make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		s.closed = append(s.closed, port)
		s.closedAt[port] = time.Now()
		s.sent[port] = n
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

// kernelCloseWaits counts, with sock_diag, the namespace's sockets in
// CLOSE_WAIT.
func kernelCloseWaits(t *testing.T, ns *nettest.NS) int {
	t.Helper()
	d, err := sockdiag.OpenInNetNS(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	n := 0
	err = d.Dump(1<<uint(probe.StateCloseWait), func(s *sockdiag.Socket) error {
		if probe.State(s.State) == probe.StateCloseWait {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// logPicture logs what the agent lists and what sock_diag has in ns,
// socket by socket, so a failed count says which connection differs.
func logPicture(t *testing.T, a *agentRun, ns *nettest.NS) {
	t.Helper()
	for _, c := range a.conns(t, "") {
		t.Logf("agent:     %5d -> %5d %-11s role %s partial %v seeded %v", c.Lport, c.Rport, c.State, c.Role, c.Partial, c.Seeded)
	}
	d, err := sockdiag.OpenInNetNS(ns.Path())
	if err != nil {
		t.Logf("sock_diag: %v", err)
		return
	}
	defer d.Close()
	err = d.Dump(^uint32(0), func(s *sockdiag.Socket) error {
		t.Logf("sock_diag: %5d -> %5d %-11s time-wait socket %v", s.Sport, s.Dport, probe.State(s.State), s.TimeWait)
		return nil
	})
	if err != nil {
		t.Logf("sock_diag: %v", err)
	}
}

// conns asks the agent's API.
func (a *agentRun) conns(t testing.TB, query string) []connview.Conn {
	t.Helper()
	code, body := a.get(t, "/api/v1/connections?"+query, "", "")
	if code != http.StatusOK {
		t.Fatalf("GET /api/v1/connections?%s: %d %s", query, code, body)
	}
	var out []connview.Conn
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	return out
}

// waitConns polls the API until n connections match, for at most 10 s.
func (a *agentRun) waitConns(t testing.TB, query string, n int) []connview.Conn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cs := a.conns(t, query)
		if len(cs) == n {
			return cs
		}
		if time.Now().After(deadline) {
			t.Fatalf("?%s: %d connections, want %d: %+v", query, len(cs), n, cs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func remotePorts(cs []connview.Conn) []int {
	var out []int
	for _, c := range cs {
		out = append(out, int(c.Rport))
	}
	return out
}

func TestConnectionsAPI(t *testing.T) {
	nettest.RequireBPF(t)
	// Ages to the second under software emulation would test the
	// emulator; the view reads the builder, not the kernel.
	notInKernelVM(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	a := startAgent(t, bin, agentOptions{args: append([]string{"--netns", ns.Path(), "--log.file",
		filepath.Join(t.TempDir(), "log"), "--stuck.close-wait", "4s"}, small...)})
	s := newCloseWaitScene(t, ns)
	firstClose := s.closedAt[s.closed[0]]

	// Exactly the N connections the kernel has in CLOSE_WAIT, the
	// longest in it first, owned by the holder, their ages within 1 s of
	// the time since their clients closed.
	cw := a.waitConns(t, "state=close_wait", closeWaitN)
	if k := kernelCloseWaits(t, ns); k != closeWaitN {
		t.Errorf("sock_diag: %d in CLOSE_WAIT, want %d", k, closeWaitN)
	}
	now := time.Now()
	if got := remotePorts(cw); !slices.Equal(got, s.closed) {
		t.Errorf("CLOSE_WAIT by age: remote ports %v, want the clients in the order they closed %v", got, s.closed)
	}
	for _, c := range cw {
		closed := s.closedAt[int(c.Rport)]
		if c.Owner == nil || c.Owner.Pid != uint32(s.holder.Pid) || c.Owner.Comm != "cwholder" || c.Role != "passive" ||
			c.Lport != uint16(s.port) || c.NetNS != ns.Inode || c.Partial || c.Seeded || c.State != "CLOSE_WAIT" {
			t.Errorf("connection %+v owner %+v: want the holder's (pid %d), port %d", c, c.Owner, s.holder.Pid, s.port)
		}
		want := now.Sub(closed).Seconds()
		if c.StateSeconds == nil || math.Abs(*c.StateSeconds-want) > 1 || c.StateSince == nil ||
			c.StateSince.Sub(closed).Abs() > time.Second || c.StateSecondsAtLeast != *c.StateSeconds {
			t.Errorf("port %d: in CLOSE_WAIT %v s since %v, the client closed %.3f s ago", c.Rport, c.StateSeconds, c.StateSince, want)
		}
		if c.LifetimeSeconds == nil || *c.LifetimeSeconds < *c.StateSeconds || c.RxBytes != uint64(s.sent[int(c.Rport)]) {
			t.Errorf("port %d: lifetime %v, received %d (sent %d)", c.Rport, c.LifetimeSeconds, c.RxBytes, s.sent[int(c.Rport)])
		}
	}

	// The filters and sorts.
	me := strconv.Itoa(os.Getpid())
	holder := strconv.Itoa(s.holder.Pid)
	port := strconv.Itoa(s.port)
	byBytes := slices.Clone(s.closed)
	slices.Reverse(byBytes)
	youngest := time.Since(s.closedAt[s.closed[closeWaitN/2]])
	for _, c := range []struct {
		query string
		n     int
		ports []int // remote ports, in order, when set
	}{
		{"state=CLOSE_WAIT&sort=bytes", closeWaitN, byBytes},
		{"state=close_wait&limit=2", 2, s.closed[:2]},
		{"state=close_wait&min_age=" + (youngest + 750*time.Millisecond).String(), closeWaitN / 2, s.closed[:closeWaitN/2]},
		{"state=established", 2 * closeWaitOpn, nil},
		{"state=established&pid=" + holder, closeWaitOpn, nil},
		{"state=established&pid=" + me, closeWaitOpn, nil},
		{"state=close_wait,established&comm=cwholder", closeWaitN + closeWaitOpn, nil},
		{"lport=" + port, closeWaitN + closeWaitOpn, nil},
		{"port=" + port, 2 * (closeWaitN + closeWaitOpn), nil}, // both ends; the closed clients' in TIME_WAIT or FIN_WAIT2
		{"port=" + strconv.Itoa(s.closed[0]), 2, nil},
		{"search=cwhold", closeWaitN + closeWaitOpn, nil},
		{"state=listen&pid=" + holder, 1, nil},
		{"netns=" + strconv.FormatUint(uint64(ns.Inode), 10) + "&state=close_wait", closeWaitN, nil},
		{"netns=1&state=close_wait", 0, nil},
		{"family=ipv6", 0, nil},
	} {
		got := a.conns(t, c.query)
		if len(got) != c.n || c.ports != nil && !slices.Equal(remotePorts(got), c.ports) {
			t.Errorf("?%s: %d connections, remote ports %v; want %d %v", c.query, len(got), remotePorts(got), c.n, c.ports)
			logPicture(t, a, ns)
		}
		for _, x := range got {
			if x.NetNS != ns.Inode {
				t.Errorf("?%s: connection of netns %d", c.query, x.NetNS)
			}
		}
	}
	// A bad parameter: 400, the JSON names it.
	for _, q := range []string{"state=bogus", "min_age=ages", "limit=0", "sort=name", "color=red"} {
		code, body := a.get(t, "/api/v1/connections?"+q, "", "")
		var e struct{ Error, Parameter string }
		param, _, _ := strings.Cut(q, "=")
		if code != http.StatusBadRequest || json.Unmarshal(body, &e) != nil || e.Parameter != param || e.Error == "" {
			t.Errorf("?%s: %d %s, want 400 naming %s", q, code, body, param)
		}
	}

	// Stuck: none before the threshold (4 s here), exactly N after it.
	stuck := func(m map[string]*dto.MetricFamily) float64 {
		return metricSum(m, "tcpfsm_connections_stuck", "state", "close_wait")
	}
	mfs, _ := a.scrape(t)
	if since := time.Since(firstClose); since < 3500*time.Millisecond {
		if v := stuck(mfs); v != 0 {
			t.Errorf("%v after the first close: %v stuck in CLOSE_WAIT, want 0 before 4 s", since, v)
		}
	} else {
		t.Logf("the first check came %v after the first close: too late to see none stuck", since)
	}
	time.Sleep(time.Until(s.closedAt[s.closed[closeWaitN-1]].Add(4500 * time.Millisecond)))
	mfs = a.waitMetric(t, "all stuck", func(m map[string]*dto.MetricFamily) bool { return stuck(m) == closeWaitN })
	oldest := metricSum(mfs, "tcpfsm_oldest_connection_age_seconds", "state", "close_wait")
	if want := time.Since(firstClose).Seconds(); math.Abs(oldest-want) > 1 {
		t.Errorf("oldest CLOSE_WAIT %.3f s, the first client closed %.3f s ago", oldest, want)
	}
	if v := metricSum(mfs, "tcpfsm_connections_stuck", "state", "syn_sent"); v != 0 {
		t.Errorf("stuck in SYN_SENT: %v", v)
	}
	if st := a.conns(t, "stuck=true"); len(st) != closeWaitN || !st[0].Stuck {
		t.Errorf("?stuck=true: %d, want %d", len(st), closeWaitN)
	}

	// One connection: its states, with their times, and its peer.
	code, body := a.get(t, fmt.Sprintf("/api/v1/connections/%d", cw[0].ID), "", "")
	var d connview.Detail
	if code != http.StatusOK || json.Unmarshal(body, &d) != nil {
		t.Fatalf("GET /api/v1/connections/%d: %d %s", cw[0].ID, code, body)
	}
	var states []string
	for _, sp := range d.States {
		states = append(states, sp.State)
		if sp.Since == nil || sp.DwellSeconds == nil {
			t.Errorf("state %+v: its times unknown", sp)
		}
	}
	if !slices.Equal(states, []string{"SYN_RECV", "ESTABLISHED", "CLOSE_WAIT"}) || !d.States[2].Current ||
		d.States[2].Since.Sub(s.closedAt[s.closed[0]]).Abs() > time.Second || d.Close != nil {
		t.Errorf("states %v: %s", states, body)
	}
	if d.Peer == nil || d.Peer.Lport != uint16(s.closed[0]) || d.Peer.Role != "active" || d.Peer.Owner == nil ||
		d.Peer.Owner.Pid != uint32(os.Getpid()) {
		t.Errorf("peer %+v", d.Peer)
	}
	if code, _ := a.get(t, "/api/v1/connections/999999999", "", ""); code != http.StatusNotFound {
		t.Errorf("an unknown id: %d", code)
	}

	s.holder.Release(t)
	s.holder.Done(t)
	if code := a.stop(t); code != 0 {
		t.Errorf("agent exit %d\n%s", code, a.stderr)
	}
}
