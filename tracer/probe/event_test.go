package probe_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

var update = flag.Bool("update", false, "rewrite golden files")

// recorded returns the raw events of a checked-in recording.
func recorded(t *testing.T, name string) [][]byte {
	t.Helper()
	f, err := os.Open("../testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd, err := recording.NewReader(f, probe.EventSize)
	if err != nil {
		t.Fatal(err)
	}
	var raws [][]byte
	for {
		kind, p, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return raws
		}
		if err != nil {
			t.Fatal(err)
		}
		if kind == recording.KindEvent {
			raws = append(raws, bytes.Clone(p))
		}
	}
}

// Every field of every recorded event decodes to what the golden file
// holds; the golden file was checked by hand against the scenario.
func TestDecodeRecordedGolden(t *testing.T) {
	raws := recorded(t, "loopback-mix.rec")
	events := make([]probe.Event, len(raws))
	for i, raw := range raws {
		if err := probe.Decode(raw, &events[i]); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
	}
	var got []byte
	for i := range events {
		line, err := json.Marshal(&events[i])
		if err != nil {
			t.Fatal(err)
		}
		got = append(append(got, line...), '\n')
	}
	golden := "testdata/loopback-mix.golden.jsonl"
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("decoded events differ from %s (run with -update after checking)", golden)
	}

	// What the scenario guarantees, independent of the golden file.
	e := &events[0]
	if e.OldState() != probe.StateClose || e.NewState() != probe.StateListen || e.Sport != 8080 {
		t.Errorf("first event: %s->%s port %d, want CLOSE->LISTEN on 8080", e.OldState(), e.NewState(), e.Sport)
	}
	var closes, v6 int
	for i := range events {
		e := &events[i]
		if e.NewState() == probe.StateClose {
			closes++
		}
		if e.Family == probe.AFInet6 {
			v6++
			if !e.LocalAddr().Is6() || e.LocalAddr().String() != "::1" && !e.LocalAddr().IsUnspecified() {
				t.Errorf("IPv6 event with local address %s", e.LocalAddr())
			}
		}
		if string(e.CommBytes()) != "python3" {
			t.Errorf("event %d: comm %q, want python3", i, e.CommBytes())
		}
	}
	if closes != 9 || v6 != 12 {
		t.Errorf("%d transitions to CLOSE and %d IPv6 events, want 9 and 12", closes, v6)
	}
	// The first connection: 1000 bytes up, 2000 down, both counted
	// without SYN and FIN.
	for i := range events {
		e := &events[i]
		if e.Dport == 8080 && e.NewState() == probe.StateClose {
			if e.TxBytes() != 1000 || e.RxBytes() != 2000 {
				t.Errorf("client at close: tx %d rx %d, want 1000 and 2000", e.TxBytes(), e.RxBytes())
			}
			break
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	good := recorded(t, "loopback-mix.rec")[1]
	var base probe.Event
	if err := probe.Decode(good, &base); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		mutate func(e *probe.Event)
		raw    []byte
		want   error
	}{
		{name: "empty", raw: []byte{}, want: probe.ErrShortEvent},
		{name: "one short", raw: good[:probe.EventSize-1], want: probe.ErrShortEvent},
		{name: "type", mutate: func(e *probe.Event) { e.Type = 9 }, want: probe.ErrBadEvent},
		{name: "type 0", mutate: func(e *probe.Event) { e.Type = 0 }, want: probe.ErrBadEvent},
		{name: "sk_err", mutate: func(e *probe.Event) { e.SkErr = 5000 }, want: probe.ErrBadEvent},
		{name: "family", mutate: func(e *probe.Event) { e.Family = 1 }, want: probe.ErrBadEvent},
		{name: "old state 0", mutate: func(e *probe.Event) { e.Oldstate = 0 }, want: probe.ErrBadEvent},
		{name: "new state 14", mutate: func(e *probe.Event) { e.Newstate = 14 }, want: probe.ErrBadEvent},
		{name: "owner source", mutate: func(e *probe.Event) { e.Owner = 4 }, want: probe.ErrBadEvent},
		{name: "flags", mutate: func(e *probe.Event) { e.Flags = 0x80 }, want: probe.ErrBadEvent},
		{name: "good", mutate: func(e *probe.Event) {}, want: nil},
		{name: "longer is fine", raw: append(bytes.Clone(good), 0, 0, 0, 0, 0, 0, 0, 0), want: nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := tc.raw
			if tc.mutate != nil {
				e := base
				tc.mutate(&e)
				raw = bytes.Clone(e.Bytes())
			}
			var out probe.Event
			err := probe.Decode(raw, &out)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("Decode: got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDecodeDoesNotAllocate(t *testing.T) {
	raw := recorded(t, "loopback-mix.rec")[3]
	var e probe.Event
	if n := testing.AllocsPerRun(1000, func() { _ = probe.Decode(raw, &e) }); n != 0 {
		t.Errorf("Decode allocates %.1f times per event", n)
	}
}

func TestPayloadBytes(t *testing.T) {
	cases := []struct {
		acked, received uint64
		flags           uint8
		tx, rx          uint64
	}{
		{0, 0, 0, 0, 0},
		{1, 0, probe.FlagSynAcked, 0, 0},
		{1001, 0, probe.FlagSynAcked, 1000, 0},
		{1002, 2001, probe.FlagSynAcked | probe.FlagFinAcked | probe.FlagFinReceived, 1000, 2000},
		{301, 1001, probe.FlagFinAcked | probe.FlagFinReceived, 300, 1000},
		{300, 1000, 0, 300, 1000},
	}
	for _, tc := range cases {
		e := probe.Event{BytesAcked: tc.acked, BytesReceived: tc.received, Flags: tc.flags}
		if e.TxBytes() != tc.tx || e.RxBytes() != tc.rx {
			t.Errorf("acked %d received %d flags %#x: tx %d rx %d, want %d %d",
				tc.acked, tc.received, tc.flags, e.TxBytes(), e.RxBytes(), tc.tx, tc.rx)
		}
	}
}

func TestParseState(t *testing.T) {
	cases := map[string]probe.State{
		"ESTABLISHED": probe.StateEstablished, "syn-sent": probe.StateSynSent, "TCP_SYN_RECV": probe.StateSynRecv,
		"fin_wait1": probe.StateFinWait1, "close": probe.StateClose, "CLOSED": probe.StateClose,
		"close-wait": probe.StateCloseWait, "listen": probe.StateListen, "Closing": probe.StateClosing,
		"time_wait": probe.StateTimeWait, "LAST_ACK": probe.StateLastAck,
	}
	for in, want := range cases {
		if got, err := probe.ParseState(in); err != nil || got != want {
			t.Errorf("ParseState(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "ESTAB", "TCP_", "FIN_WAIT3", "syn sent"} {
		if _, err := probe.ParseState(bad); err == nil {
			t.Errorf("ParseState(%q) accepted", bad)
		}
	}
	for s := probe.StateEstablished; s <= probe.MaxState; s++ {
		if got, err := probe.ParseState(s.String()); err != nil || got != s {
			t.Errorf("state %d does not round-trip through its name %q", s, s.String())
		}
	}
	if probe.State(0).Valid() || probe.State(14).Valid() {
		t.Error("states 0 and 14 reported valid")
	}
}

// Filter.Match is the user-space twin of the kernel filter.
func TestFilterMatch(t *testing.T) {
	ev := probe.Event{Pid: 42, Owner: uint8(probe.OwnerTask), Netns: 7, Family: probe.AFInet6, Sport: 80, Dport: 5555, CgroupId: 9}
	unknown := ev
	unknown.Owner = uint8(probe.OwnerUnknown)
	cases := []struct {
		name string
		f    probe.Filter
		e    probe.Event
		want bool
	}{
		{"empty", probe.Filter{}, ev, true},
		{"pid", probe.Filter{PID: 42}, ev, true},
		{"other pid", probe.Filter{PID: 43}, ev, false},
		{"pid, owner unknown", probe.Filter{PID: 42}, unknown, false},
		{"netns", probe.Filter{NetNS: 7}, ev, true},
		{"other netns", probe.Filter{NetNS: 8}, ev, false},
		{"family", probe.Filter{Family: probe.AFInet6}, ev, true},
		{"other family", probe.Filter{Family: probe.AFInet}, ev, false},
		{"lport in list", probe.Filter{LocalPorts: []uint16{443, 80}}, ev, true},
		{"lport not in list", probe.Filter{LocalPorts: []uint16{443}}, ev, false},
		{"rport", probe.Filter{RemotePorts: []uint16{5555}}, ev, true},
		{"rport is not lport", probe.Filter{RemotePorts: []uint16{80}}, ev, false},
		{"cgroup", probe.Filter{CgroupID: 9}, ev, true},
		{"other cgroup", probe.Filter{CgroupID: 10}, ev, false},
		{"all at once", probe.Filter{PID: 42, NetNS: 7, Family: probe.AFInet6, LocalPorts: []uint16{80}, RemotePorts: []uint16{5555}, CgroupID: 9}, ev, true},
	}
	for _, tc := range cases {
		if got := tc.f.Match(&tc.e); got != tc.want {
			t.Errorf("%s: Match = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// FuzzDecode: any bytes either decode to an event that validates and
// re-encodes to the same bytes, or are rejected; never a panic.
func FuzzDecode(f *testing.F) {
	for _, raw := range recordedForFuzz() {
		f.Add(raw)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		var e probe.Event
		if err := probe.Decode(raw, &e); err != nil {
			return
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("decoded event does not validate: %v", err)
		}
		if !bytes.Equal(e.Bytes(), raw[:probe.EventSize]) {
			t.Fatal("decoded event does not re-encode to its bytes")
		}
		_ = e.LocalAddr().String()
		_ = e.RemoteAddr().String()
		_ = e.OldState().String() + e.NewState().String()
	})
}

func recordedForFuzz() [][]byte {
	f, err := os.Open("../testdata/loopback-mix.rec")
	if err != nil {
		return nil
	}
	defer f.Close()
	rd, err := recording.NewReader(f, probe.EventSize)
	if err != nil {
		return nil
	}
	var raws [][]byte
	for len(raws) < 8 {
		kind, p, err := rd.Next()
		if err != nil {
			break
		}
		if kind == recording.KindEvent {
			raws = append(raws, bytes.Clone(p))
		}
	}
	return raws
}
