package recording

import (
	"bytes"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// A dump's end carries its namespace's tcp_fin_timeout in whole seconds,
// bounded; a dump end without one (older recordings wrote 0 there) reads
// as unknown.
func TestDumpDoneFinTimeout(t *testing.T) {
	for _, c := range []struct{ in, want time.Duration }{
		{0, 0}, {5 * time.Second, 5 * time.Second}, {60 * time.Second, 60 * time.Second},
		{1500 * time.Millisecond, time.Second}, {100000 * time.Second, MaxFinTimeout}, {-time.Second, 0},
	} {
		var buf bytes.Buffer
		w, err := NewWriter(&buf, Header{EventSize: uint16(probe.EventSize)})
		if err != nil {
			t.Fatal(err)
		}
		in := DumpDone{NetNS: 9, Purpose: lifecycle.PurposeTimeWait, Time: 77, FinTimeout: c.in}
		if err := w.WriteInput(&Input{Kind: KindDumpDone, DumpDone: in}); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		rd, err := NewReader(&buf, probe.EventSize)
		if err != nil {
			t.Fatal(err)
		}
		var out Input
		in.FinTimeout = c.want
		if err := rd.Read(&out); err != nil || out.DumpDone != in {
			t.Errorf("%v: read %+v %v, want %+v", c.in, out.DumpDone, err, in)
		}
	}
	old := []byte{77, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, byte(lifecycle.PurposeTimeWait), 0, 0, 0}
	var d DumpDone
	if err := decodeDumpDone(old, &d); err != nil || d.FinTimeout != 0 || d.NetNS != 9 {
		t.Errorf("a dump end without it: %+v %v", d, err)
	}
}
