package metrics

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tcpfsm/tcpfsm/exporter/connview"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

const ms = 1_000_000

// closeWaits makes a builder with connections accepted on port 80 by
// servers named in comms, one each, sitting in CLOSE_WAIT since 100 ms
// apart from the first at 100 ms; one client (no port label) in SYN_SENT
// since 950 ms.
func closeWaits(comms ...string) *lifecycle.Builder {
	b := lifecycle.NewBuilder(lifecycle.Config{}, lifecycle.Handlers(nil))
	ev := func(id, ts uint64, lport, rport uint16, comm string, old, nw probe.State) {
		e := probe.Event{Type: uint8(probe.TypeState), ConnId: id, TsNs: ts * ms, Oldstate: uint8(old), Newstate: uint8(nw),
			Family: probe.AFInet, Netns: 7, Sport: lport, Dport: rport, Owner: uint8(probe.OwnerTask), Pid: 200 + uint32(id)}
		copy(e.Comm[:], comm)
		b.Event(&e)
	}
	for i, comm := range comms {
		id, port := uint64(i+1), uint16(5000+i)
		ev(id, 10, 80, port, comm, probe.StateListen, probe.StateSynRecv)
		ev(id, 11, 80, port, comm, probe.StateSynRecv, probe.StateEstablished)
		ev(id, 100*uint64(i+1), 80, port, comm, probe.StateEstablished, probe.StateCloseWait)
	}
	ev(99, 950, 6000, 443, "curl", probe.StateClose, probe.StateSynSent)
	return b
}

func withLock(b *lifecycle.Builder) func(func(*lifecycle.Builder)) {
	var mu sync.Mutex
	return func(f func(*lifecycle.Builder)) {
		mu.Lock()
		defer mu.Unlock()
		f(b)
	}
}

func TestStuckGauges(t *testing.T) {
	b := closeWaits("srv", "srv", "srv")
	th := connview.DefaultThresholds()
	th[probe.StateCloseWait] = 750 * time.Millisecond
	m := New(Options{}, build, fixedSnapshot)
	c := NewStuck(m, th, withLock(b), func() uint64 { return 1000 * ms })
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	// CLOSE_WAIT for 900, 800, 700 ms: two past 750 ms. SYN_SENT for 50
	// ms, under 3 s. Every watched state has its series.
	want := `
# HELP tcpfsm_connections_stuck Open connections in a state for longer than its threshold (the agent's stuck.* settings). A connection older than the agent counts once the time since it was first seen passes the threshold.
# TYPE tcpfsm_connections_stuck gauge
tcpfsm_connections_stuck{state="close_wait"} 2
tcpfsm_connections_stuck{state="fin_wait2"} 0
tcpfsm_connections_stuck{state="last_ack"} 0
tcpfsm_connections_stuck{state="syn_recv"} 0
tcpfsm_connections_stuck{state="syn_sent"} 0
# HELP tcpfsm_oldest_connection_age_seconds Longest time an open connection has been in each watched state, 0 when none is; for a connection older than the agent, the time since it was first seen (a lower bound).
# TYPE tcpfsm_oldest_connection_age_seconds gauge
tcpfsm_oldest_connection_age_seconds{state="close_wait"} 0.9
tcpfsm_oldest_connection_age_seconds{state="fin_wait2"} 0
tcpfsm_oldest_connection_age_seconds{state="last_ack"} 0
tcpfsm_oldest_connection_age_seconds{state="syn_recv"} 0
tcpfsm_oldest_connection_age_seconds{state="syn_sent"} 0.05
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndLint(reg); err != nil || len(n) > 0 {
		t.Errorf("lint: %v %v", err, n)
	}
}

// With optional labels the gauges split by owner, and the budget the
// other connection metrics use holds for them too: beyond it, "other".
func TestStuckGaugesLabels(t *testing.T) {
	b := closeWaits("alpha", "beta", "gamma")
	th := connview.DefaultThresholds()
	th[probe.StateCloseWait] = 650 * time.Millisecond
	m := New(Options{Labels: []Label{LabelPort, LabelComm}, LabelLimit: 2}, build, fixedSnapshot)
	c := NewStuck(m, th, withLock(b), func() uint64 { return 1000 * ms })
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	// Groups come in state order: curl (SYN_SENT) takes the comm budget's
	// first place, alpha its second; beta and gamma are "other". Ports: 80
	// only; the client in SYN_SENT has none.
	want := `
# HELP tcpfsm_connections_stuck Open connections in a state for longer than its threshold (the agent's stuck.* settings). A connection older than the agent counts once the time since it was first seen passes the threshold.
# TYPE tcpfsm_connections_stuck gauge
tcpfsm_connections_stuck{comm="",port="",state="close_wait"} 0
tcpfsm_connections_stuck{comm="alpha",port="80",state="close_wait"} 1
tcpfsm_connections_stuck{comm="other",port="80",state="close_wait"} 2
tcpfsm_connections_stuck{comm="",port="",state="fin_wait2"} 0
tcpfsm_connections_stuck{comm="",port="",state="last_ack"} 0
tcpfsm_connections_stuck{comm="",port="",state="syn_recv"} 0
tcpfsm_connections_stuck{comm="",port="",state="syn_sent"} 0
tcpfsm_connections_stuck{comm="curl",port="",state="syn_sent"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tcpfsm_connections_stuck"); err != nil {
		t.Error(err)
	}
}

func TestTotals(t *testing.T) {
	m := New(Options{}, build, fixedSnapshot)
	replayInto(t, m, "client-closes-first")
	replayInto(t, m, "refused")
	replayInto(t, m, "reset-linger0")
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	sum := func(name string) uint64 {
		var v float64
		for _, s := range family(t, reg, name).GetMetric() {
			v += s.GetCounter().GetValue()
		}
		return uint64(v)
	}
	got := m.Totals()
	want := connview.Totals{Opened: sum("tcpfsm_connections_opened_total"), Closed: sum("tcpfsm_connections_closed_total"),
		Resets: sum("tcpfsm_resets_total"), ConnectFailures: sum("tcpfsm_connect_failures_total")}
	if got != want || got.Opened == 0 || got.ConnectFailures == 0 || got.Resets == 0 {
		t.Errorf("totals %+v, the counters say %+v", got, want)
	}
}
