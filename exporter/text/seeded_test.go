package text

import (
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// A record seeded from a time-wait socket: no lifetime (it closed before
// it was found), its TIME_WAIT a lower bound, since then.
func TestSeededTimeWaitRow(t *testing.T) {
	r := lifecycle.Record{ID: lifecycle.SeedIDBit | 1, Role: lifecycle.RoleActive, Family: probe.AFInet, Lport: 40000,
		Rport: 80, Start: 1_000_000_000, Kind: lifecycle.KindGraceful, TimeWait: lifecycle.TWSockDiag,
		TimeWaitExit: 31_000_000_000, Anomalies: lifecycle.AnomalyPartial, Seeded: true, NSpan: 1}
	r.Spans[0] = lifecycle.Span{State: probe.StateTimeWait, Exit: r.TimeWaitExit}
	f := strings.Fields(string(AppendLifeRow(nil, &r, testClock)))
	// TIME PID COMM LADDR RADDR ROLE HS_MS LIFE_MS TX RX BY HOW TW_MS
	want := []string{"12:00:01.000000", "-", "-", "0.0.0.0:40000", "0.0.0.0:80", "active", "-", "-", "0", "0", "-",
		"graceful", ">=30000.0"}
	if strings.Join(f, " ") != strings.Join(want, " ") {
		t.Errorf("row %q, want %q", f, want)
	}
	r.TimeWait, r.TimeWaitExit = lifecycle.TWAssumed, 61_000_000_000
	if f := strings.Fields(string(AppendLifeRow(nil, &r, testClock))); f[len(f)-1] != ">=60000.0" {
		t.Errorf("assumed: %q", f)
	}
	r.TimeWait, r.TimeWaitExit = lifecycle.TWPending, 0
	if f := strings.Fields(string(AppendLifeRow(nil, &r, testClock))); f[len(f)-1] != "pending" || f[7] != "-" {
		t.Errorf("pending: %q", f)
	}
}
