package recording

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

const testEventSize = 136

func writeSample(t testing.TB, events int) []byte {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Header{EventSize: testEventSize, BootNs: 1234, Created: time.Unix(100, 5), KernelRelease: "6.18.0-test", Hostname: "box"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < events; i++ {
		ev := bytes.Repeat([]byte{byte(i)}, testEventSize)
		if err := w.Write(KindEvent, ev); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			if err := w.WriteInput(&Input{Kind: KindLost, Lost: probe.LostCounts{RingFull: 3, Recursion: 4}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	data := writeSample(t, 3)
	r, err := NewReader(bytes.NewReader(data), testEventSize)
	if err != nil {
		t.Fatal(err)
	}
	h := r.Header()
	if h.Version != Version || h.EventSize != testEventSize || h.BootNs != 1234 || !h.Created.Equal(time.Unix(100, 5)) ||
		h.KernelRelease != "6.18.0-test" || h.Hostname != "box" {
		t.Errorf("header: %+v", h)
	}
	var kinds []Kind
	for {
		k, p, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, k)
		switch k {
		case KindEvent:
			if len(p) != testEventSize {
				t.Errorf("event of %d bytes", len(p))
			}
		case KindLost:
			var in Input
			if err := decode(k, p, &in); err != nil || in.Lost.RingFull != 3 || in.Lost.Recursion != 4 {
				t.Errorf("lost %+v %v", in.Lost, err)
			}
		}
	}
	if want := []Kind{KindEvent, KindEvent, KindLost, KindEvent}; !equalKinds(kinds, want) {
		t.Errorf("kinds %v, want %v", kinds, want)
	}
	if r.Offset() != int64(len(data)) {
		t.Errorf("offset %d at end of %d bytes", r.Offset(), len(data))
	}
}

func equalKinds(a, b []Kind) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// readAll reads a recording to its end and returns the first error.
func readAll(data []byte, eventSize int) error {
	r, err := NewReader(bytes.NewReader(data), eventSize)
	if err != nil {
		return err
	}
	for {
		_, _, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func TestCorruptRecordings(t *testing.T) {
	good := writeSample(t, 3)
	hdrLen := int(binary.LittleEndian.Uint16(good[10:]))
	firstRecord := hdrLen
	secondRecord := hdrLen + 8 + testEventSize
	flip := func(off int) []byte {
		b := bytes.Clone(good)
		b[off] ^= 0x40
		return b
	}
	setU16 := func(off int, v uint16) []byte {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint16(b[off:], v)
		return b
	}
	cases := []struct {
		name       string
		data       []byte
		eventSize  int
		wantOffset int64 // -1: not a FormatError
		wantText   string
	}{
		{"empty", nil, testEventSize, 0, "truncated header"},
		{"bad magic", flip(0), testEventSize, 0, "bad magic"},
		{"newer version", setU16(8, 3), testEventSize, -1, "format version 3"},
		{"version 0", setU16(8, 0), testEventSize, -1, "format version 0"},
		{"other event size", good, 144, -1, "events of 136 bytes"},
		{"header cut", good[:20], testEventSize, 0, "truncated header"},
		{"header length absurd", setU16(10, 3), testEventSize, 10, "bad header length"},
		{"header bit flip", flip(30), testEventSize, int64(hdrLen - 4), "header checksum"},
		{"record header cut", good[:firstRecord+3], testEventSize, int64(firstRecord), "truncated record header"},
		{"record payload cut", good[:secondRecord-10], testEventSize, int64(firstRecord), "truncated record"},
		{"payload bit flip", flip(secondRecord + 20), testEventSize, int64(secondRecord), "checksum mismatch"},
		{"unknown kind", func() []byte { b := bytes.Clone(good); b[secondRecord] = 9; return b }(), testEventSize, int64(secondRecord), "unknown record kind 9"},
		{"wrong event length", setU16(secondRecord+2, 100), testEventSize, int64(secondRecord), "event record of 100 bytes"},
		{"short cgroup", func() []byte {
			b := bytes.Clone(good)
			b[secondRecord] = byte(KindCgroup)
			binary.LittleEndian.PutUint16(b[secondRecord+2:], 4)
			return b
		}(), testEventSize, int64(secondRecord), "cgroup record of 4 bytes"},
		{"huge length", setU16(secondRecord+2, 65535), testEventSize, int64(secondRecord), "65535 bytes"},
		{"reserved byte", func() []byte { b := bytes.Clone(good); b[secondRecord+1] = 1; return b }(), testEventSize, int64(secondRecord), "reserved byte"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := readAll(tc.data, tc.eventSize)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("error %q does not say %q", err, tc.wantText)
			}
			var fe *FormatError
			if tc.wantOffset < 0 {
				if !errors.Is(err, ErrUnsupported) {
					t.Errorf("error %v is not ErrUnsupported", err)
				}
				return
			}
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a FormatError", err)
			}
			if fe.Offset != tc.wantOffset {
				t.Errorf("offset %d, want %d (%v)", fe.Offset, tc.wantOffset, err)
			}
		})
	}
}

func TestWriteDoesNotAllocate(t *testing.T) {
	w, err := NewWriter(io.Discard, Header{EventSize: testEventSize})
	if err != nil {
		t.Fatal(err)
	}
	ev := make([]byte, testEventSize)
	if n := testing.AllocsPerRun(1000, func() { _ = w.Write(KindEvent, ev) }); n != 0 {
		t.Errorf("Write allocates %.1f times per record", n)
	}
}

// FuzzReader: whatever the bytes, the reader returns records or an error,
// never panics, never loops, and never claims an offset past the input.
func FuzzReader(f *testing.F) {
	f.Add(writeSample(f, 3))
	f.Add(writeSample(f, 0))
	if rec, err := os.ReadFile("../testdata/loopback-mix.rec"); err == nil {
		f.Add(rec)
	}
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewReader(bytes.NewReader(data), 0)
		if err != nil {
			return
		}
		for i := 0; ; i++ {
			if i > len(data) {
				t.Fatal("more records than bytes")
			}
			k, p, err := r.Next()
			if err != nil {
				var fe *FormatError
				if errors.As(err, &fe) && fe.Offset > int64(len(data)) {
					t.Fatalf("offset %d beyond %d bytes", fe.Offset, len(data))
				}
				return
			}
			if len(p) > MaxPayload {
				t.Fatalf("payload of %d bytes", len(p))
			}
			// Decoding a payload the framing accepted errs or not, but
			// never panics.
			var in Input
			_ = decode(k, p, &in)
		}
	})
}
