package logs

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/exporter/jsonl"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

func record(id uint64) *lifecycle.Record {
	r := &lifecycle.Record{ID: id, Role: lifecycle.RoleActive, Family: probe.AFInet, Lport: 40000, Rport: 80,
		Start: 1e9, End: 2e9, Kind: lifecycle.KindGraceful, Initiator: lifecycle.InitiatorLocal, TxBytes: 10, RxBytes: 20,
		Owner: probe.OwnerTask, Pid: 42}
	copy(r.Comm[:], "curl")
	r.Spans[0] = lifecycle.Span{State: probe.StateSynSent, Enter: 1e9, Exit: 1.5e9}
	r.NSpan = 1
	return r
}

// A log line is the life -o json object with slog's keys in front.
func TestConnectionLineHasLifeSchema(t *testing.T) {
	var out bytes.Buffer
	c := clock.Clock{BootNs: 1_700_000_000e9}
	w := New(&out, c, Options{})
	r := record(7)
	w.Finished(r)
	listener := record(8)
	listener.Role = lifecycle.RoleListener
	w.Finished(listener)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("want 1 line (listeners are not logged), got %d: %q", len(lines), out.String())
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatalf("not JSON: %v: %s", err, lines[0])
	}
	var life map[string]any
	if err := json.Unmarshal(jsonl.AppendRecord(nil, r, c), &life); err != nil {
		t.Fatal(err)
	}
	if got["level"] != "INFO" || got["msg"] != "connection" || got["time"] == nil {
		t.Errorf("slog keys: %v", got)
	}
	for k, v := range life {
		gj, _ := json.Marshal(got[k])
		lj, _ := json.Marshal(v)
		if string(gj) != string(lj) {
			t.Errorf("field %s: log %s, life %s", k, gj, lj)
		}
	}
	if len(got) != len(life)+3 {
		t.Errorf("log has %d fields, life %d plus 3", len(got), len(life))
	}
}

func TestSamplingIsByID(t *testing.T) {
	var out bytes.Buffer
	w := New(&out, clock.Clock{}, Options{Sample: 0.25})
	for id := uint64(1); id <= 4000; id++ {
		w.Finished(record(id << 12))
	}
	w.Flush()
	if w.Written < 800 || w.Written > 1200 || w.Written+w.Sampled != 4000 {
		t.Errorf("kept %d of 4000 at 0.25, dropped %d", w.Written, w.Sampled)
	}
	// The same id is always decided the same way.
	var again bytes.Buffer
	w2 := New(&again, clock.Clock{}, Options{Sample: 0.25})
	for id := uint64(1); id <= 4000; id++ {
		w2.Finished(record(id << 12))
	}
	if w2.Written != w.Written {
		t.Errorf("sampling not deterministic: %d then %d", w.Written, w2.Written)
	}
}

func TestTransitions(t *testing.T) {
	var out bytes.Buffer
	w := New(&out, clock.Clock{}, Options{Transitions: true})
	e := probe.Event{Type: uint8(probe.TypeState), Family: probe.AFInet, Oldstate: uint8(probe.StateClose), Newstate: uint8(probe.StateSynSent)}
	w.Event(&e)
	w.Flush()
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || got["msg"] != "transition" || got["new"] != "SYN_SENT" {
		t.Errorf("transition line %q: %v", out.String(), err)
	}
	out.Reset()
	w = New(&out, clock.Clock{}, Options{})
	w.Event(&e)
	w.Flush()
	if out.Len() != 0 {
		t.Errorf("transitions off, wrote %q", out.String())
	}
}

// A connection line is slog's keys, then the life -o json object's
// fields byte for byte, its opening brace replaced by their comma; its
// time is RFC 3339 with nanoseconds in UTC, as time.Format writes it.
func TestConnectionLineBytes(t *testing.T) {
	var out bytes.Buffer
	c := clock.Clock{BootNs: 1_700_000_000e9}
	w := New(&out, c, Options{})
	r := record(7)
	before := time.Now()
	w.Finished(r)
	after := time.Now()
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	line := out.String()
	head, rest, ok := strings.Cut(line, `","level":"INFO","msg":"connection",`)
	if !ok || !strings.HasPrefix(head, `{"time":"`) {
		t.Fatalf("not slog's keys first: %q", line)
	}
	if want := string(jsonl.AppendRecord(nil, r, c)[1:]); rest != want {
		t.Errorf("record fields\n got %s\nwant %s", rest, want)
	}
	stamp := strings.TrimPrefix(head, `{"time":"`)
	at, err := time.Parse(time.RFC3339Nano, stamp)
	if err != nil {
		t.Fatal(err)
	}
	if at.Before(before.Truncate(0)) || at.After(after.Truncate(0)) || at.UTC().Format(time.RFC3339Nano) != stamp {
		t.Errorf("time %q: not the logging time (%v to %v) in RFC 3339 UTC", stamp, before, after)
	}
}
