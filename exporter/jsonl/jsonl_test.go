package jsonl

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// A fixed clock: monotonic zero is 2026-11-25 12:00:00 UTC.
var testClock = clock.Clock{BootNs: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).UnixNano()}

func event(family uint8, laddr, raddr string, lport, rport uint16, from, to probe.State) probe.Event {
	e := probe.Event{
		Type: uint8(probe.TypeState), Family: family, Sport: lport, Dport: rport,
		Oldstate: uint8(from), Newstate: uint8(to), TsNs: 1_500_000_000, ConnId: 8193,
		Pid: 4242, Tid: 4243, Owner: uint8(probe.OwnerCarried), Netns: 4026531840, CgroupId: 77,
		DeltaNs: 1_234_567, BytesAcked: 1002, BytesReceived: 2001, SrttUs: 45, TotalRetrans: 1,
		SegsIn: 9, SegsOut: 11,
		Flags: probe.FlagSynAcked | probe.FlagFinAcked | probe.FlagFinReceived,
	}
	copy(e.Comm[:], "curl")
	l, r := netip.MustParseAddr(laddr), netip.MustParseAddr(raddr)
	if family == probe.AFInet {
		a, b := l.As4(), r.As4()
		copy(e.Saddr[:], a[:])
		copy(e.Daddr[:], b[:])
	} else {
		e.Saddr, e.Daddr = l.As16(), r.As16()
	}
	return e
}

func TestEventJSON(t *testing.T) {
	e := event(probe.AFInet6, "2001:db8::1", "::1", 8080, 50000, probe.StateLastAck, probe.StateClose)
	copy(e.Comm[:], "we\"ird\\\x01")
	line := AppendEvent(nil, &e, testClock)
	if line[len(line)-1] != '\n' || strings.Count(string(line), "\n") != 1 {
		t.Fatalf("not one line: %q", line)
	}
	var got map[string]any
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("invalid JSON %s: %v", line, err)
	}
	want := map[string]any{
		"time": "2026-11-25T12:00:01.5Z", "ts_ns": 1.5e9, "type": "state", "conn_id": 8193.0,
		"family": "ipv6", "laddr": "2001:db8::1", "lport": 8080.0, "raddr": "::1", "rport": 50000.0,
		"netns": 4026531840.0, "old": "LAST_ACK", "new": "CLOSE", "old_state_ns": 1234567.0,
		"owner": "carried", "pid": 4242.0, "tid": 4243.0, "comm": "we\"ird\\\x01", "cgroup_id": 77.0,
		"tx_bytes": 1000.0, "rx_bytes": 2000.0, "bytes_acked": 1002.0, "bytes_received": 2001.0,
		"srtt_us": 45.0, "total_retrans": 1.0, "segs_in": 9.0, "segs_out": 11.0,
		"flags": []any{"syn_acked", "fin_acked", "fin_received"},
	}
	if len(got) != len(want) {
		t.Errorf("got %d fields, want %d: %s", len(got), len(want), line)
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("field %s missing", k)
			continue
		}
		gj, _ := json.Marshal(g)
		wj, _ := json.Marshal(w)
		if string(gj) != string(wj) {
			t.Errorf("field %s: got %s, want %s", k, gj, wj)
		}
	}
}

func TestAppendString(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote`, `back\slash`, "\x00\x01\x1f\x7f", "héllo", "bad\xffutf8", "\u2028"} {
		got := AppendString(nil, []byte(s))
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Errorf("%q: invalid JSON %s: %v", s, got, err)
			continue
		}
		want, _ := json.Marshal(s)
		var wantBack string
		if err := json.Unmarshal(want, &wantBack); err != nil {
			t.Fatal(err)
		}
		if back != wantBack {
			t.Errorf("%q: decodes to %q, encoding/json gives %q", s, back, wantBack)
		}
	}
}

func TestEncodeDoesNotAllocate(t *testing.T) {
	e := event(probe.AFInet6, "2001:db8::1", "::1", 8080, 50000, probe.StateLastAck, probe.StateClose)
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(500, func() { buf = AppendEvent(buf[:0], &e, testClock) }); n != 0 {
		t.Errorf("AppendEvent allocates %.1f times per event", n)
	}
}
