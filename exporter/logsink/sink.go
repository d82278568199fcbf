// Package logsink writes log lines to a file from a goroutine of its own,
// so that whoever logs never waits for the file: a line is copied into a
// bounded queue and the call returns. What the queue cannot hold, and what
// the file refuses, is dropped and counted, never retried without bound:
//
//   - the queue full (a slow disk, a stalled pipe or NFS mount): the new
//     line is dropped (DroppedQueueFull);
//   - a write error (ENOSPC, EIO, EPIPE, a read-only remount): the lines of
//     that write that did not reach the file are dropped
//     (DroppedWriteError), and the next write tries again, so logging
//     resumes by itself once the file takes writes again.
//
// Lines are never torn: a write that ends inside a line is rolled back by
// truncating a regular file to the end of its last whole line. The file is
// written in append mode, so a copytruncate rotation leaves no hole; Reopen
// opens the path anew between two writes, so a rename rotation loses and
// repeats nothing. Every line given is, at Close, either written whole
// (Written) or counted as dropped.
package logsink

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of Options.QueueBytes.
const (
	DefaultQueueBytes = 4 << 20
	MinQueueBytes     = 64 << 10
	MaxQueueBytes     = 1 << 30
)

// DefaultReportEvery is how often write errors are reported at most.
const DefaultReportEvery = time.Minute

// File is what the sink writes to. A regular file (Truncate and Stat) has
// a torn line rolled back; one with SetWriteDeadline (a pipe) lets Close
// give up on a stalled reader.
type File interface {
	io.Writer
	io.Closer
}

// Options configure a sink.
type Options struct {
	// QueueBytes bounds the lines waiting for the file, the write in
	// progress included. Default DefaultQueueBytes.
	QueueBytes int
	// Open opens the file anew for Reopen (the same path); nil: Reopen
	// keeps the file.
	Open func() (File, error)
	// Report, when set, is told of failures and recoveries, from the
	// sink's goroutine: write errors at most once per ReportEvery.
	Report      func(Report)
	ReportEvery time.Duration
	// now is the clock of the reports (tests).
	now func() time.Time
}

// ReportKind says what a Report is about.
type ReportKind int

const (
	// WriteFailed: a write failed; Err is the latest error, Errors and
	// Dropped count the failed writes and dropped lines since the last
	// report.
	WriteFailed ReportKind = iota
	// Resumed: a write succeeded after failures that were reported;
	// Errors and Dropped are what was not reported yet.
	Resumed
	// Reopened: Reopen opened the file anew (Err nil) or could not (Err
	// set; the old file is kept).
	Reopened
)

// Report is one failure or recovery of the sink.
type Report struct {
	Kind            ReportKind
	Err             error
	Errors, Dropped uint64
}

// Stats are the sink's counters since New.
type Stats struct {
	Written                             uint64 // lines written whole
	DroppedQueueFull, DroppedWriteError uint64 // lines dropped, by reason
	WriteErrors                         uint64 // writes that failed
	Reopens, ReopenErrors               uint64
	QueueBytes, QueueLimit              int // bytes not written yet, and their bound
}

// Sink is an asynchronous, bounded line writer. Write and Flush may be
// called from any goroutine.
type Sink struct {
	opts Options

	mu       sync.Mutex
	queue    []byte // whole lines not handed to the file yet
	lines    uint64 // lines in queue
	spare    []byte // the other buffer, while it is not being written
	inflight int    // bytes of the write in progress
	inLines  uint64 // and its lines
	closed   bool
	f        File // written by the goroutine only; swapped under mu

	kick   chan struct{} // something to write or reopen
	quit   chan struct{}
	done   chan struct{}
	reopen atomic.Bool

	written, dropFull, dropWrite, writeErrors, reopens, reopenErrors atomic.Uint64

	// The goroutine's own.
	torn       bool // a torn line could not be rolled back: start the next write on a new line
	failing    bool // the last write failed
	told       bool // a failure was reported and no recovery yet
	lastReport time.Time
	pending    Report // not reported yet
}

// New starts a sink writing to f, which it owns: Close closes it.
func New(f File, opts Options) *Sink {
	if opts.QueueBytes <= 0 {
		opts.QueueBytes = DefaultQueueBytes
	}
	if opts.ReportEvery <= 0 {
		opts.ReportEvery = DefaultReportEvery
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	s := &Sink{opts: opts, f: f,
		queue: make([]byte, 0, opts.QueueBytes), spare: make([]byte, 0, opts.QueueBytes),
		kick: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s
}

// Write queues one whole line (p ends in a newline) and returns at once;
// p is copied. A line the queue cannot hold is dropped and counted. It
// never fails: failures are in Stats.
func (s *Sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	if s.closed || len(s.queue)+s.inflight+len(p) > s.opts.QueueBytes {
		s.mu.Unlock()
		s.dropFull.Add(1)
		return len(p), nil
	}
	s.queue = append(s.queue, p...)
	s.lines++
	// A quarter full: start writing before the next Flush.
	busy := len(s.queue) >= s.opts.QueueBytes/4
	s.mu.Unlock()
	if busy {
		s.wake()
	}
	return len(p), nil
}

// Flush asks for what is queued to be written; it does not wait.
func (s *Sink) Flush() error {
	s.wake()
	return nil
}

// Reopen asks for the file to be opened anew before the next write (after
// a rename rotation); it does not wait. The result is reported.
func (s *Sink) Reopen() {
	if s.opts.Open == nil {
		return
	}
	s.reopen.Store(true)
	s.wake()
}

func (s *Sink) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Stats returns the counters.
func (s *Sink) Stats() Stats {
	s.mu.Lock()
	q := len(s.queue) + s.inflight
	s.mu.Unlock()
	return Stats{Written: s.written.Load(), DroppedQueueFull: s.dropFull.Load(), DroppedWriteError: s.dropWrite.Load(),
		WriteErrors: s.writeErrors.Load(), Reopens: s.reopens.Load(), ReopenErrors: s.reopenErrors.Load(),
		QueueBytes: q, QueueLimit: s.opts.QueueBytes}
}

// ErrStalled is Close's error when the file did not take the last lines
// within the timeout.
var ErrStalled = errors.New("log file stalled: lines not written at exit")

// Close stops taking lines, writes what is queued, waiting at most
// timeout (a pipe's write is given up then; a regular file's cannot be),
// and closes the file. Lines never written are counted as dropped.
func (s *Sink) Close(timeout time.Duration) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.quit)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-s.done:
	case <-t.C:
		s.mu.Lock()
		f := s.f
		s.mu.Unlock()
		if d, ok := f.(interface{ SetWriteDeadline(time.Time) error }); ok {
			// A file without deadlines says so; the wait below bounds it.
			_ = d.SetWriteDeadline(time.Now())
		}
		select {
		case <-s.done:
		case <-time.After(time.Second):
			// Stuck in the kernel: what it holds, and what waits, is lost
			// with the process.
			s.mu.Lock()
			left := s.lines + s.inLines
			s.mu.Unlock()
			s.dropWrite.Add(left)
			return ErrStalled
		}
	}
	return s.f.Close()
}

// run is the sink's goroutine: it writes the queue whenever woken, and
// everything at the end.
func (s *Sink) run() {
	defer close(s.done)
	for {
		select {
		case <-s.kick:
		case <-s.quit:
			s.maybeReopen()
			for s.writeQueue() {
			}
			return
		}
		s.maybeReopen()
		s.writeQueue()
	}
}

func (s *Sink) maybeReopen() {
	if !s.reopen.Swap(false) {
		return
	}
	f, err := s.opts.Open()
	if err != nil {
		s.reopenErrors.Add(1)
		s.report(Report{Kind: Reopened, Err: err})
		return
	}
	s.mu.Lock()
	old := s.f
	s.f = f
	s.mu.Unlock()
	old.Close()
	s.torn = false // the torn line, if any, is in the old file
	s.reopens.Add(1)
	s.report(Report{Kind: Reopened})
}

// writeQueue writes what is queued in one write; false when there was
// nothing.
func (s *Sink) writeQueue() bool {
	s.mu.Lock()
	batch, lines := s.queue, s.lines
	s.queue, s.lines = s.spare, 0
	s.spare = nil
	s.inflight, s.inLines = len(batch), lines
	s.mu.Unlock()
	if len(batch) > 0 {
		s.write(batch, lines)
	}
	s.mu.Lock()
	s.spare, s.inflight, s.inLines = batch[:0], 0, 0
	s.mu.Unlock()
	return len(batch) != 0
}

// write hands a batch of lines to the file and counts the outcome.
func (s *Sink) write(batch []byte, lines uint64) {
	var err error
	if s.torn {
		if _, err = s.f.Write([]byte{'\n'}); err == nil {
			s.torn = false
		}
	}
	n := 0
	if err == nil {
		n, err = s.f.Write(batch)
		if err == nil && n < len(batch) {
			err = io.ErrShortWrite
		}
	}
	if err == nil {
		s.written.Add(lines)
		s.recovered()
		return
	}
	whole := bytes.LastIndexByte(batch[:n], '\n') + 1
	if whole < n {
		s.rollback(n - whole)
	}
	ok := uint64(bytes.Count(batch[:whole], []byte{'\n'}))
	s.written.Add(ok)
	s.dropWrite.Add(lines - ok)
	s.writeErrors.Add(1)
	s.failed(err, lines-ok)
}

// rollback removes the torn end of the last write from a regular file,
// or has the next write start a new line when it cannot.
func (s *Sink) rollback(torn int) {
	type truncater interface {
		Truncate(int64) error
		Stat() (os.FileInfo, error)
	}
	if t, ok := s.f.(truncater); ok {
		if fi, err := t.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() >= int64(torn) {
			if t.Truncate(fi.Size()-int64(torn)) == nil {
				return
			}
		}
	}
	s.torn = true
}

// failed reports a failed write, at most once per ReportEvery.
func (s *Sink) failed(err error, dropped uint64) {
	s.failing = true
	s.pending.Errors++
	s.pending.Dropped += dropped
	now := s.opts.now()
	if !s.lastReport.IsZero() && now.Sub(s.lastReport) < s.opts.ReportEvery {
		return
	}
	r := s.pending
	r.Kind, r.Err = WriteFailed, err
	s.pending = Report{}
	s.lastReport = now
	s.told = true
	s.report(r)
}

// recovered reports the first good write after reported failures.
func (s *Sink) recovered() {
	if !s.failing {
		return
	}
	s.failing = false
	if !s.told {
		return
	}
	s.told = false
	r := s.pending
	r.Kind = Resumed
	s.pending = Report{}
	s.report(r)
}

func (s *Sink) report(r Report) {
	if s.opts.Report != nil {
		s.opts.Report(r)
	}
}
