package session_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/scenario"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

func replay(t *testing.T, path string) ([]lifecycle.Record, session.ReplayResult) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd, err := recording.NewReader(f, probe.EventSize)
	if err != nil {
		t.Fatal(err)
	}
	col := &collector{}
	res, err := session.Replay(rd, session.ReplayOptions{Handler: col})
	if err != nil {
		t.Fatalf("replay %s: %v", path, err)
	}
	_, finished := col.get()
	return finished, res
}

// The recordings of every scenario, captured live with `tcpfsm record`,
// replayed without privileges: the same records the live tests demand.
func TestScenarioRecordings(t *testing.T) {
	for _, sc := range scenario.All() {
		t.Run(sc.Name, func(t *testing.T) {
			path := filepath.Join("..", "testdata", "scenarios", sc.Name+".rec")
			recs, res := replay(t, path)
			for _, p := range scenario.MatchRecords(recs, sc.Expect) {
				t.Error(p)
			}
			if res.Lost.Total() != 0 || res.Stats.Unmatched != 0 || res.Stats.LateResets != 0 {
				t.Errorf("lost %d, unmatched %d, late resets %d", res.Lost.Total(), res.Stats.Unmatched, res.Stats.LateResets)
			}
			// Replays are deterministic.
			again, _ := replay(t, path)
			if len(again) != len(recs) {
				t.Fatalf("second replay: %d records, first %d", len(again), len(recs))
			}
			for i := range recs {
				if again[i] != recs[i] {
					t.Errorf("second replay differs at record %d:\n%s\n%s", i, scenario.Describe(&again[i]), scenario.Describe(&recs[i]))
				}
			}
			for i := range recs {
				r := &recs[i]
				if r.Role != lifecycle.RoleListener && (!r.OwnerKnown() || string(r.CommBytes()) != "tcpfsm.test") {
					t.Errorf("%s: owner %s %q, want the capturing test process", scenario.Describe(r), r.Owner, r.CommBytes())
				}
			}
		})
	}
}

// The client's TIME_WAIT in the one-minute recording: entered at its
// close, ended when sock_diag no longer listed it, about 60 s later.
func TestRecordedTimeWaitEnd(t *testing.T) {
	recs, _ := replay(t, filepath.Join("..", "testdata", "scenarios", "client-closes-first.rec"))
	for _, r := range recs {
		if r.Role != lifecycle.RoleActive {
			continue
		}
		if r.TimeWait != lifecycle.TWSockDiag || r.TimeWaitEnter != r.End {
			t.Fatalf("TIME_WAIT %s entered %d, closed %d", r.TimeWait, r.TimeWaitEnter, r.End)
		}
		if d := time.Duration(r.TimeWaitNs()); d < 59*time.Second || d > 62*time.Second {
			t.Errorf("TIME_WAIT lasted %s, want about 60s", d)
		}
		last := r.Spans[r.NSpan-1]
		if last.State != probe.StateTimeWait || last.Exit != r.TimeWaitExit {
			t.Errorf("last span %s exit %d, want TIME_WAIT to %d", last.State, last.Exit, r.TimeWaitExit)
		}
		return
	}
	t.Fatal("no client record")
}
