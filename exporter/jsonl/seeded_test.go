package jsonl

import (
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// seededTimeWait is a record seeded from a time-wait socket found at 1 s,
// its TIME_WAIT ended 30 s later: no close time, no entry, no owner.
func seededTimeWait(how lifecycle.TimeWaitEnd, exit uint64) lifecycle.Record {
	r := lifecycle.Record{ID: lifecycle.SeedIDBit | 1, Role: lifecycle.RoleActive, Family: probe.AFInet, Lport: 40000,
		Rport: 80, Start: 1_000_000_000, Kind: lifecycle.KindGraceful, TimeWait: how, TimeWaitExit: exit,
		Anomalies: lifecycle.AnomalyPartial, Seeded: true, NSpan: 1}
	r.Spans[0] = lifecycle.Span{State: probe.StateTimeWait, Exit: exit}
	return r
}

func TestSeededTimeWaitJSON(t *testing.T) {
	for _, c := range []struct {
		r    lifecycle.Record
		want string
	}{
		{seededTimeWait(lifecycle.TWSockDiag, 31_000_000_000),
			`"time_wait":{"enter_ns":null,"duration_ns":null,"duration_ns_at_least":30000000000,"end":"sock_diag"}`},
		{seededTimeWait(lifecycle.TWPending, 0),
			`"time_wait":{"enter_ns":null,"duration_ns":null,"duration_ns_at_least":null,"end":"pending"}`},
	} {
		line := string(AppendRecord(nil, &c.r, testClock))
		decodeLine(t, []byte(line))
		for _, want := range []string{c.want, `"end":null,`, `"owner":null`, `"handshake_ns":null`, `"established_ns":null`,
			`"lifetime_ns":null`, `"states":[{"state":"TIME_WAIT","at_ns":null,"dwell_ns":null}]`, `"close":"graceful"`,
			`"anomalies":["partial"],"seeded":true`} {
			if !strings.Contains(line, want) {
				t.Errorf("lacks %s in\n%s", want, line)
			}
		}
	}
	// One seen entering TIME_WAIT has no lower bound, its duration.
	r := seededTimeWait(lifecycle.TWSockDiag, 31_000_000_000)
	r.Seeded, r.Anomalies, r.TimeWaitEnter, r.End = false, 0, 1_000_000_000, 1_000_000_000
	if line := string(AppendRecord(nil, &r, testClock)); !strings.Contains(line,
		`"time_wait":{"enter_ns":0,"duration_ns":30000000000,"end":"sock_diag"}`) {
		t.Errorf("seen entering: %s", line)
	}
}
