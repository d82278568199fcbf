package recording

import (
	"bytes"
	"errors"
	"io"
	"syscall"
	"testing"
	"time"
)

// disk is a file on a disk of cap bytes: a write past it writes what fits
// and fails with ENOSPC, as write(2) does.
type disk struct {
	data      []byte
	cap       int
	truncates int
}

func (d *disk) Write(p []byte) (int, error) {
	if len(d.data)+len(p) > d.cap {
		n := d.cap - len(d.data)
		d.data = append(d.data, p[:n]...)
		return n, syscall.ENOSPC
	}
	d.data = append(d.data, p...)
	return len(p), nil
}

func (d *disk) Truncate(n int64) error {
	d.truncates++
	d.data = d.data[:n]
	return nil
}

// noTruncDisk cannot be truncated (a pipe).
type noTruncDisk struct{ d *disk }

func (n noTruncDisk) Write(p []byte) (int, error) { return n.d.Write(p) }

// The disk fills at every kind of place: inside the header, at its end,
// inside a record's header or payload, at a record's end, in a later
// flush. The writer stops with ENOSPC, and the file reads to its end
// without an error, holding exactly the events Written counts.
func TestWriterFullDisk(t *testing.T) {
	hdr := Header{EventSize: testEventSize, BootNs: 1, Created: time.Unix(100, 0), KernelRelease: "6.18", Hostname: "box"}
	full := writeSample(t, 0)
	hdrLen := len(full)
	frame := recordHeaderSize + testEventSize
	for _, tc := range []struct {
		name string
		cap  int
	}{
		{"inside the header", 10},
		{"at the header's end", hdrLen},
		{"inside a record header", hdrLen + 3*frame + 5},
		{"inside a payload", hdrLen + 7*frame + recordHeaderSize + 40},
		{"at a record's end", hdrLen + 9*frame},
		{"in a later flush", hdrLen + 1500*frame + 77},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &disk{cap: tc.cap}
			w, err := NewWriter(d, hdr)
			if err != nil {
				t.Fatal(err)
			}
			var werr error
			for i := 0; i < 3000 && werr == nil; i++ {
				werr = w.Write(KindEvent, bytes.Repeat([]byte{byte(i)}, testEventSize))
				if werr == nil && i%500 == 499 {
					werr = w.Flush()
				}
			}
			if werr == nil {
				werr = w.Flush()
			}
			if !errors.Is(werr, syscall.ENOSPC) {
				t.Fatalf("writer: %v, want ENOSPC", werr)
			}
			if err := w.Write(KindTick, make([]byte, 8)); !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("after the failure: %v", err)
			}
			st := w.Written()
			if int64(len(d.data)) != st.Bytes {
				t.Errorf("file %d bytes, Written %d", len(d.data), st.Bytes)
			}
			if tc.cap < hdrLen {
				if len(d.data) != 0 {
					t.Errorf("cut inside the header: %d bytes left", len(d.data))
				}
				return
			}
			r, err := NewReader(bytes.NewReader(d.data), testEventSize)
			if err != nil {
				t.Fatal(err)
			}
			var events uint64
			for {
				k, _, err := r.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("after %d events: %v", events, err)
				}
				if k == KindEvent {
					events++
				}
			}
			if events != st.Events || st.Records != events {
				t.Errorf("file holds %d events, Written %+v", events, st)
			}
			if whole := uint64((tc.cap - hdrLen) / frame); events != whole {
				t.Errorf("%d events kept, %d fit", events, whole)
			}
		})
	}

	// A writer that cannot be truncated keeps the cut record; the reader
	// says where.
	d := &disk{cap: hdrLen + frame + 10}
	w, _ := NewWriter(noTruncDisk{d}, hdr)
	for range 2 {
		if err := w.Write(KindEvent, make([]byte, testEventSize)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); !errors.Is(err, syscall.ENOSPC) || w.Written().Events != 1 {
		t.Errorf("untruncatable: %v, %+v", err, w.Written())
	}
}
