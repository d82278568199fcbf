package metrics

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

// replayInto feeds a checked-in scenario recording through the pipeline
// with m as its handler, as the agent does live.
func replayInto(t *testing.T, m *Metrics, name string) *lifecycle.Builder {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "tracer", "testdata", "scenarios", name+".rec"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd, err := recording.NewReader(f, probe.EventSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := session.Replay(rd, session.ReplayOptions{Handler: m, OnEvent: m.Event}); err != nil {
		t.Fatal(err)
	}
	return nil
}

func fixedSnapshot() Snapshot {
	var s Snapshot
	s.States[probe.StateEstablished] = 3
	s.States[probe.StateTimeWait] = 2
	s.States[probe.StateListen] = 1
	s.Tracked = 6
	s.Lost = probe.LostCounts{RingFull: 4, Recursion: 1}
	s.Builder.Evictions[lifecycle.EvictCap] = 7
	s.Builder.Anomalies[0] = 2
	s.Programs = []probe.ProgramStats{{Name: "raw_inet_sock_set_state", RunCount: 100, RunTime: 50 * time.Microsecond}}
	return s
}

var build = BuildInfo{Version: "v1.2.3", Revision: "abcdef", GoVersion: "go1.26.8"}

func TestCountersFromRecordings(t *testing.T) {
	m := New(Options{}, build, fixedSnapshot)
	replayInto(t, m, "client-closes-first")
	replayInto(t, m, "refused")
	replayInto(t, m, "connect-timeout")
	replayInto(t, m, "reset-linger0")
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)

	want := `
# HELP tcpfsm_connections_closed_total Connections closed, by who started the close and how it ended.
# TYPE tcpfsm_connections_closed_total counter
tcpfsm_connections_closed_total{initiator="local",kind="connect_timeout",role="active"} 1
tcpfsm_connections_closed_total{initiator="local",kind="graceful",role="active"} 1
tcpfsm_connections_closed_total{initiator="local",kind="reset_sent",role="active"} 1
tcpfsm_connections_closed_total{initiator="local",kind="reset_sent",role="passive"} 1
tcpfsm_connections_closed_total{initiator="remote",kind="graceful",role="passive"} 1
tcpfsm_connections_closed_total{initiator="remote",kind="refused",role="active"} 1
tcpfsm_connections_closed_total{initiator="remote",kind="reset_received",role="active"} 1
tcpfsm_connections_closed_total{initiator="remote",kind="reset_received",role="passive"} 1
# HELP tcpfsm_connections_opened_total Connections started: connect() (active) or a SYN accepted by a listener (passive).
# TYPE tcpfsm_connections_opened_total counter
tcpfsm_connections_opened_total{role="active"} 5
tcpfsm_connections_opened_total{role="passive"} 3
# HELP tcpfsm_connect_failures_total connect() calls that never reached ESTABLISHED, by reason.
# TYPE tcpfsm_connect_failures_total counter
tcpfsm_connect_failures_total{reason="other"} 0
tcpfsm_connect_failures_total{reason="refused"} 1
tcpfsm_connect_failures_total{reason="reset"} 0
tcpfsm_connect_failures_total{reason="timeout"} 1
# HELP tcpfsm_resets_total RSTs sent and received on tracked connections.
# TYPE tcpfsm_resets_total counter
tcpfsm_resets_total{direction="received"} 3
tcpfsm_resets_total{direction="sent"} 2
# HELP tcpfsm_bytes_sent_total Payload bytes the peers acknowledged, counted when connections close.
# TYPE tcpfsm_bytes_sent_total counter
tcpfsm_bytes_sent_total 4000
# HELP tcpfsm_bytes_received_total Payload bytes received in order, counted when connections close.
# TYPE tcpfsm_bytes_received_total counter
tcpfsm_bytes_received_total 4000
# HELP tcpfsm_events_lost_total Events the kernel could not deliver: the ring buffer was full, or the program was already running on that CPU.
# TYPE tcpfsm_events_lost_total counter
tcpfsm_events_lost_total{reason="program_busy"} 1
tcpfsm_events_lost_total{reason="ring_buffer_full"} 4
# HELP tcpfsm_connections Tracked connections in each TCP state now, as ss counts them: time-wait sockets by their substate, so an orphan waiting for its peer's FIN is fin_wait2; time_wait counts reconstructed ones too.
# TYPE tcpfsm_connections gauge
tcpfsm_connections{state="close_wait"} 0
tcpfsm_connections{state="closing"} 0
tcpfsm_connections{state="established"} 3
tcpfsm_connections{state="fin_wait1"} 0
tcpfsm_connections{state="fin_wait2"} 0
tcpfsm_connections{state="last_ack"} 0
tcpfsm_connections{state="listen"} 1
tcpfsm_connections{state="syn_recv"} 0
tcpfsm_connections{state="syn_sent"} 0
tcpfsm_connections{state="time_wait"} 2
# HELP tcpfsm_build_info tcpfsm's version; always 1.
# TYPE tcpfsm_build_info gauge
tcpfsm_build_info{goversion="go1.26.8",revision="abcdef",version="v1.2.3"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"tcpfsm_connections_closed_total", "tcpfsm_connections_opened_total", "tcpfsm_connect_failures_total",
		"tcpfsm_resets_total", "tcpfsm_bytes_sent_total", "tcpfsm_bytes_received_total", "tcpfsm_events_lost_total",
		"tcpfsm_connections", "tcpfsm_build_info"); err != nil {
		t.Error(err)
	}

	// client-closes-first's active end: CLOSE->SYN_SENT ... FIN_WAIT2->CLOSE.
	for _, tr := range [][2]string{{"close", "syn_sent"}, {"syn_sent", "established"}, {"fin_wait2", "close"}, {"last_ack", "close"}} {
		m := testutil.ToFloat64(counterOf(t, reg, "tcpfsm_state_transitions_total", map[string]string{"from": tr[0], "to": tr[1]}))
		if m < 1 {
			t.Errorf("transition %s->%s: %v", tr[0], tr[1], m)
		}
	}
	// Histograms: one handshake per established connection, the client's
	// TIME_WAIT of about 60 s in the state durations.
	if n := histCount(t, reg, "tcpfsm_handshake_duration_seconds"); n != 6 {
		t.Errorf("handshake observations %d, want 6", n)
	}
	if n := histCount(t, reg, "tcpfsm_connection_duration_seconds"); n != 8 {
		t.Errorf("connection duration observations %d, want 8", n)
	}
	tw := findHist(t, reg, "tcpfsm_state_duration_seconds", "state", "time_wait")
	if tw == nil || tw.GetSampleCount() != 1 || tw.GetSampleSum() < 59 || tw.GetSampleSum() > 62 {
		t.Errorf("time_wait duration: %v", tw)
	}
}

func TestLint(t *testing.T) {
	m := New(Options{Labels: []Label{LabelPort, LabelComm}}, build, fixedSnapshot)
	replayInto(t, m, "client-closes-first")
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// The optional labels keep to their budget; the rest is "other". Never a
// pid, an address or an ephemeral port.
func TestOptionalLabelsBudget(t *testing.T) {
	m := New(Options{Labels: []Label{LabelPort, LabelComm}, LabelLimit: 2}, build, fixedSnapshot)
	for i, comm := range []string{"a", "b", "c", "d", "a"} {
		e := probe.Event{Type: uint8(probe.TypeState), Oldstate: uint8(probe.StateListen), Newstate: uint8(probe.StateSynRecv),
			Sport: uint16(8000 + i), Dport: 50000, Owner: uint8(probe.OwnerListener)}
		copy(e.Comm[:], comm)
		m.Event(&e)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	want := `
# HELP tcpfsm_connections_opened_total Connections started: connect() (active) or a SYN accepted by a listener (passive).
# TYPE tcpfsm_connections_opened_total counter
tcpfsm_connections_opened_total{comm="a",port="8000",role="passive"} 1
tcpfsm_connections_opened_total{comm="b",port="8001",role="passive"} 1
tcpfsm_connections_opened_total{comm="other",port="other",role="passive"} 2
tcpfsm_connections_opened_total{comm="a",port="other",role="passive"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tcpfsm_connections_opened_total"); err != nil {
		t.Error(err)
	}
}

func TestEventDoesNotAllocate(t *testing.T) {
	m := New(Options{}, build, fixedSnapshot)
	e := probe.Event{Type: uint8(probe.TypeState), Oldstate: uint8(probe.StateEstablished), Newstate: uint8(probe.StateFinWait1)}
	if n := testing.AllocsPerRun(1000, func() { m.Event(&e) }); n != 0 {
		t.Errorf("Event allocates %.1f times", n)
	}
}
