package main

// FIN_WAIT2 told from TIME_WAIT, end to end: clients close while their
// server holds its sockets, so each client's end is an orphan the kernel
// hands to a time-wait socket in its FIN_WAIT2 substate. The agent's
// gauges equal `ss -tan` run in the namespace at the same moment while
// the server holds, after it closes, and when orphans die of
// tcp_fin_timeout; the records tell each state with its time.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
)

// ssCount counts the namespace's sockets `ss -Htan state STATE` lists.
func ssCount(t testing.TB, ns *nettest.NS, state string) int {
	t.Helper()
	var out []byte
	err := ns.Do(func() error {
		var err error
		out, err = exec.Command("ss", "-Htan", "state", state).Output()
		return err
	})
	if err != nil {
		t.Fatalf("ss state %s: %v", state, err)
	}
	return bytes.Count(out, []byte("\n"))
}

// finWait2States are the states compared, ss's names and the gauge's.
var finWait2States = [][2]string{{"fin-wait-2", "fin_wait2"}, {"time-wait", "time_wait"}, {"close-wait", "close_wait"},
	{"last-ack", "last_ack"}, {"fin-wait-1", "fin_wait1"}, {"established", "established"}}

// agreesWithSS waits until each gauge equals ss's count and want's, ss
// unchanged around the scrape: the same moment. It returns the scrape.
func (a *agentRun) agreesWithSS(t testing.TB, ns *nettest.NS, what string, want map[string]int, within time.Duration) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		before := map[string]int{}
		for _, s := range finWait2States {
			before[s[1]] = ssCount(t, ns, s[0])
		}
		mfs, body := a.scrape(t)
		var diffs []string
		for _, s := range finWait2States {
			after := ssCount(t, ns, s[0])
			g := int(metricSum(mfs, "tcpfsm_connections", "state", s[1]))
			w, wanted := want[s[1]]
			if g != before[s[1]] || g != after || (wanted && g != w) {
				diffs = append(diffs, fmt.Sprintf("%s: agent %d, ss %d then %d, want %v", s[1], g, before[s[1]], after, want[s[1]]))
			}
		}
		if len(diffs) == 0 {
			return mfs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v:\n%s\n/metrics:\n%s\nstderr:\n%s", what, within, strings.Join(diffs, "\n"),
				grepTcpfsm(body), a.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stateRecord is what these tests read of a connection record.
type stateRecord struct {
	Msg      string `json:"msg"`
	Role     string `json:"role"`
	Lport    int    `json:"lport"`
	Rport    int    `json:"rport"`
	Close    string `json:"close"`
	ClosedBy string `json:"closed_by"`
	States   []struct {
		State string `json:"state"`
		AtNs  *int64 `json:"at_ns"`
		Dwell *int64 `json:"dwell_ns"`
	} `json:"states"`
	TimeWait *struct {
		EnterNs int64 `json:"enter_ns"`
	} `json:"time_wait"`
	Anomalies []string `json:"anomalies"`
}

func stateRecords(t testing.TB, out string) []stateRecord {
	t.Helper()
	var recs []stateRecord
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var r stateRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
		if r.Msg == "connection" {
			recs = append(recs, r)
		}
	}
	return recs
}

func (r *stateRecord) stateNames() []string {
	var s []string
	for _, x := range r.States {
		s = append(s, x.State)
	}
	return s
}

// dwell is the record's time in a state.
func (r *stateRecord) dwell(state string) time.Duration {
	for _, x := range r.States {
		if x.State == state && x.Dwell != nil {
			return time.Duration(*x.Dwell)
		}
	}
	return -1
}

// orphanScene: a holder in ns accepted n connections from this process,
// whose clients then closed; closedAt says when each client port closed.
type orphanScene struct {
	holder   *nettest.Peer
	port     int
	closedAt map[int]time.Time
}

func newOrphanScene(t *testing.T, clientNS, serverNS *nettest.NS, host string, n int) *orphanScene {
	t.Helper()
	s := &orphanScene{closedAt: map[int]time.Time{}}
	s.holder = serverNS.StartHelper(t, nettest.Helper{Comm: "fw2holder", Role: "holder", Network: "tcp4",
		Addr: host + ":0", Send: n})
	s.port = s.holder.Port(t)
	addr := net.JoinHostPort(host, strconv.Itoa(s.port))
	conns := make([]*net.TCPConn, 0, n)
	for i := 0; i < n; i++ {
		c, err := clientNS.Dial("tcp4", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	if line := s.holder.Line(t); line != fmt.Sprintf("accepted %d", n) {
		t.Fatalf("holder: %q", line)
	}
	for _, c := range conns {
		port := c.LocalAddr().(*net.TCPAddr).Port
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		s.closedAt[port] = time.Now()
	}
	return s
}

// Clients close, the server holds, then closes: 5 connections, then
// 2000. While it holds, the clients' ends are FIN_WAIT2 (orphans), the
// server's CLOSE_WAIT, none TIME_WAIT and none counted closed; after, the
// clients' are TIME_WAIT, every close graceful, and the records tell
// FIN_WAIT2 for as long as the server held.
func TestAgentFinWait2UntilThePeerCloses(t *testing.T) {
	nettest.RequireTool(t, "ss", "iproute2") // the kernel's own count, compared
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	for _, n := range []int{5, 2000} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			ns := nettest.NewNS(t)
			a := startAgent(t, bin, agentOptions{args: []string{"--netns", ns.Path(), "--max-tracked", "16384"}})
			s := newOrphanScene(t, ns, ns, "127.0.0.1", n)
			mfs := a.agreesWithSS(t, ns, "server holding", map[string]int{"fin_wait2": n, "time_wait": 0, "close_wait": n}, 15*time.Second)
			if c := metricSum(mfs, "tcpfsm_connections_closed_total", "role", "active"); c != 0 {
				t.Errorf("%v active closes counted while no peer closed", c)
			}
			time.Sleep(time.Second) // FIN_WAIT2 for a while
			released := time.Now()
			s.holder.Release(t)
			s.holder.Done(t)
			releasedDone := time.Now()
			mfs = a.agreesWithSS(t, ns, "server closed", map[string]int{"fin_wait2": 0, "time_wait": n, "close_wait": 0, "last_ack": 0},
				15*time.Second)
			for _, c := range []struct {
				role, kind string
				want       int
			}{{"active", "graceful", n}, {"passive", "graceful", n}, {"active", "fin_wait2_timeout", 0}} {
				if got := metricSum(mfs, "tcpfsm_connections_closed_total", "role", c.role, "kind", c.kind); int(got) != c.want {
					t.Errorf("closed %s %s: %v, want %d", c.role, c.kind, got, c.want)
				}
			}
			if code := a.stop(t); code != 0 {
				t.Fatalf("exit %d\nstderr:\n%s", code, a.stderr)
			}
			var clients, servers int
			var minFW2, maxFW2 time.Duration
			for _, r := range stateRecords(t, a.stdout.String()) {
				switch {
				case r.Role == "active" && r.Rport == s.port:
					clients++
					closed, ok := s.closedAt[r.Lport]
					fw2 := r.dwell("FIN_WAIT2")
					if !ok || r.Close != "graceful" || r.ClosedBy != "local" || r.TimeWait == nil ||
						!slices.Equal(r.stateNames(), []string{"SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"}) ||
						fw2 < released.Sub(closed)-50*time.Millisecond || fw2 > releasedDone.Sub(closed)+50*time.Millisecond {
						t.Errorf("client %d: %s by %s, states %v, FIN_WAIT2 %v (closed %v before the release)", r.Lport, r.Close,
							r.ClosedBy, r.stateNames(), fw2, released.Sub(closed))
					}
					if clients == 1 || fw2 < minFW2 {
						minFW2 = fw2
					}
					maxFW2 = max(maxFW2, fw2)
				case r.Role == "passive" && r.Lport == s.port:
					servers++
					if r.Close != "graceful" || r.ClosedBy != "remote" ||
						!slices.Equal(r.stateNames(), []string{"SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"}) {
						t.Errorf("server %d: %s by %s, states %v", r.Rport, r.Close, r.ClosedBy, r.stateNames())
					}
				}
			}
			if clients != n || servers != n {
				t.Errorf("%d client and %d server records, want %d each", clients, servers, n)
			}
			t.Logf("%d connections: FIN_WAIT2 %v to %v; the server held %v after the last close", n,
				minFW2.Round(time.Millisecond), maxFW2.Round(time.Millisecond), released.Sub(s.lastClose()).Round(time.Millisecond))
		})
	}
}

func (s *orphanScene) lastClose() time.Time {
	var last time.Time
	for _, at := range s.closedAt {
		if at.After(last) {
			last = at
		}
	}
	return last
}

// setFinTimeout sets the namespace's net.ipv4.tcp_fin_timeout.
func setFinTimeout(t testing.TB, ns *nettest.NS, seconds int) {
	t.Helper()
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/tcp_fin_timeout", []byte(strconv.Itoa(seconds)), 0)
	}); err != nil {
		t.Fatal(err)
	}
}

// The server never closes: with tcp_fin_timeout 3 s in the namespace,
// the orphans die in FIN_WAIT2; the gauge drops with ss's count, and each
// client's close is fin_wait2_timeout, after 3 s in FIN_WAIT2.
func TestAgentFinWait2Timeout(t *testing.T) {
	nettest.RequireTool(t, "ss", "iproute2") // the kernel's own count, compared
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	setFinTimeout(t, ns, 3)
	const n = 20
	a := startAgent(t, bin, agentOptions{args: append([]string{"--netns", ns.Path()}, small...)})
	s := newOrphanScene(t, ns, ns, "127.0.0.1", n)
	a.agreesWithSS(t, ns, "server holding", map[string]int{"fin_wait2": n, "close_wait": n, "time_wait": 0}, 10*time.Second)
	mfs := a.agreesWithSS(t, ns, "orphans dead", map[string]int{"fin_wait2": 0, "close_wait": n, "time_wait": 0}, 10*time.Second)
	dead := time.Now()
	if got := metricSum(mfs, "tcpfsm_connections_closed_total", "role", "active", "kind", "fin_wait2_timeout"); got != n {
		t.Errorf("fin_wait2_timeout closes %v, want %d", got, n)
	}
	if got := metricSum(mfs, "tcpfsm_connections_closed_total", "role", "active", "kind", "graceful"); got != 0 {
		t.Errorf("graceful closes %v, want 0", got)
	}
	if code := a.stop(t); code != 0 {
		t.Fatalf("exit %d\nstderr:\n%s", code, a.stderr)
	}
	clients := 0
	for _, r := range stateRecords(t, a.stdout.String()) {
		if r.Role != "active" || r.Rport != s.port {
			continue
		}
		clients++
		fw2 := r.dwell("FIN_WAIT2")
		if r.Close != "fin_wait2_timeout" || r.ClosedBy != "local" || r.TimeWait != nil ||
			!slices.Equal(r.stateNames(), []string{"SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"}) ||
			// The death is read off sock_diag's timer (whole ms of
			// jiffies): it may land a few ms before the 3 s.
			fw2 < 3*time.Second-nettest.DumpTimerSlack() || fw2 > dead.Sub(s.closedAt[r.Lport]) {
			t.Errorf("client %d: %s by %s, states %v, FIN_WAIT2 %v", r.Lport, r.Close, r.ClosedBy, r.stateNames(), fw2)
		}
	}
	if clients != n {
		t.Errorf("%d client records, want %d", clients, n)
	}
}

// Clients in one namespace, their server in another the agent does not
// trace: only sock_diag tells the orphans' FIN_WAIT2 from TIME_WAIT,
// from the time-wait sockets' substate and timer.
func TestAgentFinWait2PeerUntraced(t *testing.T) {
	nettest.RequireTool(t, "ss", "iproute2") // the kernel's own count, compared
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	clientNS, serverNS := nettest.NewNS(t), nettest.NewNS(t)
	clientNS.Veth(t, serverNS, "fw2a", "10.251.0.1/30", "fw2b", "10.251.0.2/30")
	const n = 50
	a := startAgent(t, bin, agentOptions{args: append([]string{"--netns", clientNS.Path()}, small...)})
	s := newOrphanScene(t, clientNS, serverNS, "10.251.0.2", n)
	mfs := a.agreesWithSS(t, clientNS, "server holding", map[string]int{"fin_wait2": n, "time_wait": 0, "close_wait": 0}, 10*time.Second)
	if c := metricSum(mfs, "tcpfsm_connections_closed_total", "role", "active"); c != 0 {
		t.Errorf("%v active closes counted while no peer closed", c)
	}
	time.Sleep(time.Second)
	released := time.Now()
	s.holder.Release(t)
	s.holder.Done(t)
	releasedDone := time.Now()
	mfs = a.agreesWithSS(t, clientNS, "server closed", map[string]int{"fin_wait2": 0, "time_wait": n}, 10*time.Second)
	if got := metricSum(mfs, "tcpfsm_connections_closed_total", "role", "active", "kind", "graceful"); got != n {
		t.Errorf("graceful closes %v, want %d", got, n)
	}
	if code := a.stop(t); code != 0 {
		t.Fatalf("exit %d\nstderr:\n%s", code, a.stderr)
	}
	clients := 0
	var worst time.Duration
	for _, r := range stateRecords(t, a.stdout.String()) {
		if r.Role != "active" || r.Rport != s.port {
			continue
		}
		clients++
		closed := s.closedAt[r.Lport]
		fw2 := r.dwell("FIN_WAIT2")
		// The FIN's time from the timer, to a jiffy and the dump's latency.
		lo, hi := released.Sub(closed)-50*time.Millisecond, releasedDone.Sub(closed)+50*time.Millisecond
		if r.Close != "graceful" || r.TimeWait == nil ||
			!slices.Equal(r.stateNames(), []string{"SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"}) ||
			fw2 < lo || fw2 > hi {
			t.Errorf("client %d: %s, states %v, FIN_WAIT2 %v, want %v to %v", r.Lport, r.Close, r.stateNames(), fw2, lo, hi)
		}
		worst = max(worst, max(lo+50*time.Millisecond-fw2, fw2-hi+50*time.Millisecond))
	}
	if clients != n {
		t.Errorf("%d client records, want %d", clients, n)
	}
	t.Logf("FIN_WAIT2 from sock_diag's timers: at most %v outside the release", worst)
}
