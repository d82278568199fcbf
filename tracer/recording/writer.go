package recording

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// writeBuffer is how much a Writer holds before writing: whole records
// only, so that a failed write can be cut back to a record's end.
const writeBuffer = 256 << 10

// Writer writes a recording. It buffers whole records: call Flush to hand
// them to the file, and sync the file to make them durable.
//
// A write that fails (a full disk) stops the writer: every later call
// returns the same error. When the file can be truncated (an *os.File the
// recording starts at the beginning of), what was written of the failed
// write past its last whole record is cut off, so the file stays a
// recording that reads to its end without an error; Written says what it
// holds.
type Writer struct {
	out     io.Writer
	buf     []byte // whole records (and the header, first) not written yet
	bufRecs Stats  // of buf
	written Stats  // in out
	hdrLen  int
	scratch [MaxPayload]byte // WriteInput encodes here
	err     error
}

// Stats count what a Writer wrote whole: the header and records, events
// among them.
type Stats struct {
	Records, Events uint64
	Bytes           int64
}

// NewWriter starts a recording with its header (written with the first
// records, at the first Flush).
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	if len(h.KernelRelease) > 1024 || len(h.Hostname) > 1024 {
		return nil, errors.New("record header: kernel release or hostname too long")
	}
	hdrLen := fixedHeaderSize + 2 + len(h.KernelRelease) + 2 + len(h.Hostname) + 4
	b := make([]byte, 0, writeBuffer)
	b = append(b, Magic...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	b = binary.LittleEndian.AppendUint16(b, uint16(hdrLen))
	b = binary.LittleEndian.AppendUint16(b, h.EventSize)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint64(b, uint64(h.BootNs))
	b = binary.LittleEndian.AppendUint64(b, uint64(h.Created.UnixNano()))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(h.KernelRelease)))
	b = append(b, h.KernelRelease...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(h.Hostname)))
	b = append(b, h.Hostname...)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	return &Writer{out: w, buf: b, hdrLen: hdrLen}, nil
}

// Write appends one record. It does not allocate.
func (w *Writer) Write(kind Kind, payload []byte) error {
	if w.err != nil {
		return w.err
	}
	if len(payload) > MaxPayload {
		return fmt.Errorf("record of %d bytes exceeds %d", len(payload), MaxPayload)
	}
	if len(w.buf)+recordHeaderSize+len(payload) > cap(w.buf) {
		if err := w.Flush(); err != nil {
			return err
		}
	}
	w.buf = append(w.buf, byte(kind), 0)
	w.buf = binary.LittleEndian.AppendUint16(w.buf, uint16(len(payload)))
	w.buf = binary.LittleEndian.AppendUint32(w.buf, crc32.Checksum(payload, castagnoli))
	w.buf = append(w.buf, payload...)
	w.bufRecs.Records++
	if kind == KindEvent {
		w.bufRecs.Events++
	}
	return nil
}

// Flush writes the buffered records to the underlying writer.
func (w *Writer) Flush() error {
	if w.err != nil || len(w.buf) == 0 {
		return w.err
	}
	n, err := w.out.Write(w.buf)
	if err == nil && n < len(w.buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = err
		w.keepWhole(n)
		return err
	}
	w.written.Records += w.bufRecs.Records
	w.written.Events += w.bufRecs.Events
	w.written.Bytes += int64(n)
	w.buf, w.bufRecs = w.buf[:0], Stats{}
	return nil
}

// keepWhole counts the whole records among the first n bytes of a failed
// write and cuts the file back to their end.
func (w *Writer) keepWhole(n int) {
	b, off := w.buf, 0
	if w.written.Bytes == 0 { // the header leads this write
		if n < w.hdrLen {
			w.truncate(0)
			return
		}
		off = w.hdrLen
	}
	for off+recordHeaderSize <= n {
		end := off + recordHeaderSize + int(binary.LittleEndian.Uint16(b[off+2:]))
		if end > n {
			break
		}
		w.written.Records++
		if Kind(b[off]) == KindEvent {
			w.written.Events++
		}
		off = end
	}
	w.written.Bytes += int64(off)
	if off < n {
		w.truncate(w.written.Bytes)
	}
}

func (w *Writer) truncate(size int64) {
	if t, ok := w.out.(interface{ Truncate(int64) error }); ok {
		// If it fails the cut record stays, and a reader names its offset.
		_ = t.Truncate(size)
	}
}

// Written is what the underlying writer holds whole.
func (w *Writer) Written() Stats { return w.written }
