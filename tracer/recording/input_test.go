package recording

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

func TestSocketEncoding(t *testing.T) {
	in := lifecycle.Socket{Time: 1, NetNS: 2, ExpiresMs: 3, Pid: 4, CgroupID: 5, Family: probe.AFInet6, State: probe.StateTimeWait,
		TimeWait: true, Purpose: lifecycle.PurposeTimeWait, Lport: 6, Rport: 7, Laddr: [16]byte{8}, Raddr: [16]byte{9}, Comm: [16]byte{'x'}}
	b := appendSocket(nil, &in)
	if len(b) != socketSize {
		t.Fatalf("%d bytes, want %d", len(b), socketSize)
	}
	var out Input
	if err := decode(KindSocket, b, &out); err != nil || out.Socket != in {
		t.Errorf("round trip: %v %+v", err, out.Socket)
	}
	for _, bad := range [][]byte{b[:10], append(append([]byte{}, b[:32]...), append([]byte{3}, b[33:]...)...)} {
		if err := decode(KindSocket, bad, &out); !errors.Is(err, ErrBadInput) {
			t.Errorf("bad socket record: %v", err)
		}
	}
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Header{EventSize: uint16(probe.EventSize)})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteInput(&Input{Kind: KindDumpDone, DumpDone: DumpDone{NetNS: 9, Purpose: lifecycle.PurposeSnapshot, Time: 77}}); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	rd, err := NewReader(&buf, probe.EventSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := rd.Read(&out); err != nil || out.Kind != KindDumpDone ||
		out.DumpDone != (DumpDone{NetNS: 9, Purpose: lifecycle.PurposeSnapshot, Time: 77}) {
		t.Errorf("dump done: %+v %v", out.DumpDone, err)
	}
}

// Every input of every checked-in recording decodes, and encodes back to
// the very bytes it was read from: the codec the live session writes with
// is the one replays read with.
func TestInputsRoundTrip(t *testing.T) {
	files, _ := filepath.Glob("../testdata/scenarios/*.rec")
	files = append(files, "../testdata/loopback-mix.rec")
	kinds := map[Kind]int{}
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		rd, err := NewReader(bytes.NewReader(data), probe.EventSize)
		if err != nil {
			t.Fatal(err)
		}
		var again bytes.Buffer
		w, err := NewWriter(&again, rd.Header())
		if err != nil {
			t.Fatal(err)
		}
		hdrLen := int(rd.Offset())
		var in Input
		for {
			err := rd.Read(&in)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			kinds[in.Kind]++
			if err := w.WriteInput(&in); err != nil {
				t.Fatal(err)
			}
		}
		w.Flush()
		if got := again.Bytes(); !bytes.Equal(got[hdrLen:], data[hdrLen:]) {
			t.Errorf("%s: re-encoded inputs differ from the recording's", path)
		}
	}
	for _, k := range []Kind{KindEvent, KindLost, KindTick, KindSocket, KindDumpDone, KindCgroup, KindFeatures} {
		if kinds[k] == 0 && k != KindLost {
			t.Errorf("no %s input in the recordings: the round trip does not cover it", k)
		}
	}
	t.Logf("inputs by kind: %v", kinds)
}

func TestWriteInputDoesNotAllocate(t *testing.T) {
	w, err := NewWriter(io.Discard, Header{EventSize: uint16(probe.EventSize)})
	if err != nil {
		t.Fatal(err)
	}
	inputs := []Input{
		{Kind: KindEvent, Event: probe.Event{Family: probe.AFInet, Type: 1, Oldstate: 7, Newstate: 2}},
		{Kind: KindTick, Tick: 5},
		{Kind: KindLost, Lost: probe.LostCounts{RingFull: 1}},
		{Kind: KindSocket, Socket: lifecycle.Socket{Family: probe.AFInet, State: probe.StateListen, Purpose: lifecycle.PurposeSnapshot}},
		{Kind: KindDumpDone, DumpDone: DumpDone{Purpose: lifecycle.PurposeSnapshot}},
		{Kind: KindCgroup, Cgroup: Cgroup{ID: 3, Path: "/system.slice"}},
		{Kind: KindFeatures, Features: probe.Features{TimeWait: true}},
	}
	for i := range inputs {
		if n := testing.AllocsPerRun(100, func() { _ = w.WriteInput(&inputs[i]) }); n != 0 {
			t.Errorf("WriteInput(%s) allocates %.1f times", inputs[i].Kind, n)
		}
	}
}
