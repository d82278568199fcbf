// Package logs writes connection records, and optionally every
// transition, as JSON lines: slog's time, level and msg keys followed by
// the fields of `tcpfsm life -o json` (or `tcpfsm trace -o json`).
package logs

import (
	"io"
	"sync"
	"time"

	"github.com/tcpfsm/tcpfsm/exporter/jsonl"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Options choose what is logged.
type Options struct {
	// Transitions logs every state transition too.
	Transitions bool
	// Sample is the fraction of connection records logged, 0 < Sample <= 1;
	// which ones is decided by the connection id, so both records of a
	// paired connection are not kept or dropped together by accident.
	// Default 1.
	Sample float64
}

// Writer is a lifecycle.Handler that logs finished records.
type Writer struct {
	opts  Options
	clock clock.Clock
	mu    sync.Mutex
	w     io.Writer
	buf   []byte
	err   error
	keep  uint64 // ids hashing below this are logged

	// Written counts the lines handed to w, Sampled the records left out
	// by Options.Sample.
	Written, Sampled uint64
}

// New returns a writer to w, which gets one whole line per Write: give it
// a logsink.Sink, which queues lines and never waits for the file, so
// that logging never holds up the caller (the event path). A w that
// implements Flush() error is flushed by Flush. An error from w stops the
// writer (Flush returns it); a Sink never returns one.
func New(w io.Writer, c clock.Clock, opts Options) *Writer {
	if opts.Sample <= 0 || opts.Sample > 1 {
		opts.Sample = 1
	}
	keep := ^uint64(0)
	if opts.Sample < 1 {
		keep = uint64(opts.Sample * float64(^uint64(0)))
	}
	return &Writer{opts: opts, clock: c, w: w, buf: make([]byte, 0, 4096), keep: keep}
}

// mix spreads connection ids (a per-CPU counter in the high bits) over
// the whole range before sampling (splitmix64's finalizer).
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// prefix starts a line with slog's keys and a comma, after which come
// the object's fields.
func (w *Writer) prefix(msg string) {
	w.buf = append(w.buf[:0], `{"time":"`...)
	w.buf = jsonl.AppendRFC3339Nano(w.buf, time.Now().UnixNano())
	w.buf = append(w.buf, `","level":"INFO","msg":"`...)
	w.buf = append(w.buf, msg...)
	w.buf = append(w.buf, `",`...)
}

// Closed does nothing: a record is logged once, when finished.
func (w *Writer) Closed(*lifecycle.Record) {}

// Finished logs a connection's record.
func (w *Writer) Finished(r *lifecycle.Record) {
	if r.Role == lifecycle.RoleListener {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.keep != ^uint64(0) && mix(r.ID) > w.keep {
		w.Sampled++
		return
	}
	w.prefix("connection")
	w.buf = jsonl.AppendRecordFields(w.buf, r, w.clock)
	w.write()
}

// Event logs a transition when transitions are on.
func (w *Writer) Event(e *probe.Event) { w.EventMeta(e, nil) }

// EventMeta logs a transition when transitions are on, with what is
// known of its owner's container (nil: nothing), as trace -o json.
func (w *Writer) EventMeta(e *probe.Event, m *metadata.Meta) {
	if !w.opts.Transitions {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.prefix("transition")
	w.buf = jsonl.AppendEventMetaFields(w.buf, e, w.clock, m)
	w.write()
}

// write hands the line to w.
func (w *Writer) write() {
	if w.err != nil {
		return
	}
	if _, err := w.w.Write(w.buf); err != nil {
		w.err = err
		return
	}
	w.Written++
}

// Flush asks w to write out what it buffers.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if f, ok := w.w.(interface{ Flush() error }); ok {
		w.err = f.Flush()
	}
	return w.err
}
