package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// The kernel's accounting per program, and the state program's nested
// instance: its handled runs, and its misses apart from the lost events.
func TestBPFProgramSeries(t *testing.T) {
	snap := func() Snapshot {
		var s Snapshot
		s.Lost = probe.LostCounts{Recursion: 2}
		s.Programs = []probe.ProgramStats{
			{Name: "raw_inet_sock_set_state", RunCount: 1000, RunTime: 200 * time.Microsecond, RecursionMisses: 130},
			{Name: "raw_nested_inet_sock_set_state", RunCount: 1128, RunTime: 30 * time.Microsecond, RecursionMisses: 1, NestedRuns: 128},
			{Name: "raw_tcp_send_reset", RunCount: 5, RecursionMisses: 0},
		}
		return s
	}
	m := New(Options{}, build, snap)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	want := `
# HELP tcpfsm_bpf_nested_runs_total Transitions the state program's nested instance handled because the main program was already running on that CPU: not lost.
# TYPE tcpfsm_bpf_nested_runs_total counter
tcpfsm_bpf_nested_runs_total 128
# HELP tcpfsm_bpf_program_recursion_misses_total Runs of each BPF program the kernel skipped because it was already running on that CPU. The state program's are handled by its nested instance (tcpfsm_bpf_nested_runs_total); the rest are tcpfsm_events_lost_total{reason="program_busy"}.
# TYPE tcpfsm_bpf_program_recursion_misses_total counter
tcpfsm_bpf_program_recursion_misses_total{program="raw_inet_sock_set_state"} 130
tcpfsm_bpf_program_recursion_misses_total{program="raw_nested_inet_sock_set_state"} 1
tcpfsm_bpf_program_recursion_misses_total{program="raw_tcp_send_reset"} 0
# HELP tcpfsm_bpf_program_runs_total Runs of each BPF program, as the kernel counts them: only while kernel.bpf_stats_enabled is 1.
# TYPE tcpfsm_bpf_program_runs_total counter
tcpfsm_bpf_program_runs_total{program="raw_inet_sock_set_state"} 1000
tcpfsm_bpf_program_runs_total{program="raw_nested_inet_sock_set_state"} 1128
tcpfsm_bpf_program_runs_total{program="raw_tcp_send_reset"} 5
# HELP tcpfsm_events_lost_total Events the kernel could not deliver: the ring buffer was full, or the program was already running on that CPU.
# TYPE tcpfsm_events_lost_total counter
tcpfsm_events_lost_total{reason="program_busy"} 2
tcpfsm_events_lost_total{reason="ring_buffer_full"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tcpfsm_bpf_nested_runs_total",
		"tcpfsm_bpf_program_recursion_misses_total", "tcpfsm_bpf_program_runs_total", "tcpfsm_events_lost_total"); err != nil {
		t.Error(err)
	}
}
