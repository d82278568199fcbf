package logsink

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeFile is a regular file in memory whose writes fail as told: a disk
// of cap bytes (ENOSPC past it, after writing what fits), every write
// failing with failErr, writes returning short without an error, writes
// that wait for release, and truncation that fails.
type fakeFile struct {
	mu        sync.Mutex
	data      []byte
	cap       int   // 0: no limit
	failErr   error // every write fails with it, writing nothing
	shortBy   int   // a write stops this many bytes short, without an error
	noTrunc   bool  // Truncate fails (and Stat says "not regular")
	release   chan struct{}
	writes    int
	truncates int
	closed    bool
}

func (f *fakeFile) Write(p []byte) (int, error) {
	if f.release != nil {
		<-f.release
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	if f.failErr != nil {
		return 0, f.failErr
	}
	n := len(p)
	if f.shortBy > 0 && len(p) > f.shortBy {
		n = len(p) - f.shortBy
		f.data = append(f.data, p[:n]...)
		return n, nil
	}
	if f.cap > 0 && len(f.data)+n > f.cap {
		n = max(f.cap-len(f.data), 0)
		f.data = append(f.data, p[:n]...)
		return n, syscall.ENOSPC
	}
	f.data = append(f.data, p...)
	return n, nil
}

func (f *fakeFile) Close() error { f.mu.Lock(); f.closed = true; f.mu.Unlock(); return nil }

func (f *fakeFile) Truncate(n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.noTrunc {
		return syscall.EINVAL
	}
	f.truncates++
	f.data = f.data[:n]
	return nil
}

type fakeInfo struct {
	fs.FileInfo
	size    int64
	regular bool
}

func (i fakeInfo) Size() int64 { return i.size }
func (i fakeInfo) Mode() fs.FileMode {
	if i.regular {
		return 0o640
	}
	return fs.ModeNamedPipe
}

func (f *fakeFile) Stat() (os.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fakeInfo{size: int64(len(f.data)), regular: !f.noTrunc}, nil
}

func (f *fakeFile) set(do func(f *fakeFile)) { f.mu.Lock(); do(f); f.mu.Unlock() }

func (f *fakeFile) text() string { f.mu.Lock(); defer f.mu.Unlock(); return string(f.data) }

// put queues a line; Write never fails (failures are in Stats).
func put(s *Sink, p []byte) { _, _ = s.Write(p) }

// line i: a JSON-ish line whose length varies, so writes end mid-line.
func line(i int) []byte {
	return fmt.Appendf(nil, "{\"id\":%d,\"pad\":%q}\n", i, strings.Repeat("x", 20+i%37))
}

// wholeLines checks every line of text is one given line, and returns
// their ids in order.
func wholeLines(t *testing.T, text string) []int {
	t.Helper()
	var ids []int
	for _, l := range strings.SplitAfter(text, "\n") {
		if l == "" {
			continue
		}
		var id int
		if _, err := fmt.Sscanf(l, "{\"id\":%d,", &id); err != nil || l != string(line(id)) {
			t.Fatalf("torn or foreign line %q", l)
		}
		ids = append(ids, id)
	}
	return ids
}

// waitWritten waits until the sink has handled n lines (written or dropped).
func waitHandled(t *testing.T, s *Sink, n uint64) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := s.Stats()
		if st.Written+st.DroppedWriteError+st.DroppedQueueFull >= n && st.QueueBytes == 0 {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink handled %+v of %d lines", st, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// Every fault: each line given is written whole or counted dropped, never
// torn, and lines after the fault is gone are written again.
func TestSinkWriteFaults(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(f *fakeFile)
		heal  func(f *fakeFile)
		// some lines of the faulty phase get through
		partial   bool
		truncates bool
	}{
		{name: "disk full", fault: func(f *fakeFile) { f.cap = len(f.data) + 1500 }, heal: func(f *fakeFile) { f.cap = 0 },
			partial: true, truncates: true},
		{name: "EIO", fault: func(f *fakeFile) { f.failErr = syscall.EIO }, heal: func(f *fakeFile) { f.failErr = nil }},
		{name: "EPIPE", fault: func(f *fakeFile) { f.failErr = syscall.EPIPE }, heal: func(f *fakeFile) { f.failErr = nil }},
		{name: "short write, no error", fault: func(f *fakeFile) { f.shortBy = 7 }, heal: func(f *fakeFile) { f.shortBy = 0 },
			partial: true, truncates: true},
		{name: "disk full, no truncate", fault: func(f *fakeFile) { f.cap = len(f.data) + 1500; f.noTrunc = true },
			heal: func(f *fakeFile) { f.cap = 0 }, partial: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeFile{}
			var reports []Report
			var rmu sync.Mutex
			s := New(f, Options{QueueBytes: MinQueueBytes, Report: func(r Report) { rmu.Lock(); reports = append(reports, r); rmu.Unlock() }})
			n := 0
			batch := func(k int) {
				for range k {
					put(s, line(n))
					n++
				}
				s.Flush()
				waitHandled(t, s, uint64(n))
			}
			batch(10)
			f.set(tc.fault)
			for range 10 {
				batch(7)
			}
			during := s.Stats()
			f.set(tc.heal)
			batch(10)
			if err := s.Close(time.Second); err != nil {
				t.Fatal(err)
			}
			st := s.Stats()
			text := f.text()
			if tc.name == "disk full, no truncate" {
				// The torn end stays; the next write starts a new line.
				var kept []string
				for _, l := range strings.SplitAfter(text, "\n") {
					if l != "" && strings.HasPrefix(l, "{\"id\":") && strings.HasSuffix(l, "}\n") {
						kept = append(kept, l)
					} else if l != "" && !strings.HasSuffix(l, "\n") {
						t.Errorf("file ends in a torn line %q", l)
					}
				}
				text = strings.Join(kept, "")
			}
			ids := wholeLines(t, text)
			if st.Written+st.DroppedWriteError != uint64(n) || st.DroppedQueueFull != 0 {
				t.Errorf("%d lines: written %d + dropped %d (queue full %d)", n, st.Written, st.DroppedWriteError, st.DroppedQueueFull)
			}
			if uint64(len(ids)) != st.Written {
				t.Errorf("file has %d lines, Written %d", len(ids), st.Written)
			}
			if during.DroppedWriteError == 0 || during.WriteErrors == 0 {
				t.Errorf("fault counted nothing: %+v", during)
			}
			if got := during.Written; tc.partial != (got > 10) {
				t.Errorf("written during the fault %d (10 before it), partial %v", got, tc.partial)
			}
			// The last 10 (healed) are all there, in order.
			if len(ids) < 10 || ids[len(ids)-1] != n-1 || ids[len(ids)-10] != n-10 {
				t.Errorf("after the fault: ids end %v, want %d..%d", ids[max(len(ids)-10, 0):], n-10, n-1)
			}
			if tc.truncates != (f.truncates > 0) {
				t.Errorf("%d truncations", f.truncates)
			}
			rmu.Lock()
			defer rmu.Unlock()
			if len(reports) != 2 || reports[0].Kind != WriteFailed || reports[0].Err == nil || reports[1].Kind != Resumed {
				t.Errorf("reports %+v: want one failure, one recovery", reports)
			}
			var dropped uint64
			for _, r := range reports {
				dropped += r.Dropped
			}
			if dropped != st.DroppedWriteError {
				t.Errorf("reports count %d dropped, stats %d", dropped, st.DroppedWriteError)
			}
			if !f.closed {
				t.Error("file not closed")
			}
		})
	}
}

// A stalled file: Write never waits, the queue stays within its bound,
// the rest is dropped and counted; once it moves, all queued is written.
func TestSinkQueueBound(t *testing.T) {
	f := &fakeFile{release: make(chan struct{})}
	s := New(f, Options{QueueBytes: MinQueueBytes})
	const n = 5000
	start := time.Now()
	for i := range n {
		put(s, line(i))
		if i%100 == 0 {
			s.Flush()
		}
		if q := s.Stats().QueueBytes; q > MinQueueBytes {
			t.Fatalf("queue %d bytes, bound %d", q, MinQueueBytes)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("%d writes to a stalled file took %v", n, d)
	}
	st := s.Stats()
	if st.DroppedQueueFull == 0 || st.Written != 0 {
		t.Fatalf("stalled: %+v", st)
	}
	close(f.release)
	if err := s.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	st = s.Stats()
	ids := wholeLines(t, f.text())
	if st.Written+st.DroppedQueueFull != n || uint64(len(ids)) != st.Written {
		t.Errorf("%d lines: written %d (file %d) + dropped %d", n, st.Written, len(ids), st.DroppedQueueFull)
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			t.Fatalf("out of order: %d after %d", ids[i], ids[i-1])
		}
	}
	t.Logf("stalled: %d written, %d dropped, bound %d bytes", st.Written, st.DroppedQueueFull, MinQueueBytes)
}

// Reopen switches files between two writes: every line in exactly one.
func TestSinkReopen(t *testing.T) {
	var files []*fakeFile
	var mu sync.Mutex
	open := func() (File, error) {
		mu.Lock()
		defer mu.Unlock()
		f := &fakeFile{}
		files = append(files, f)
		return f, nil
	}
	first, _ := open()
	var reopened []Report
	s := New(first, Options{Open: open, Report: func(r Report) { reopened = append(reopened, r) }})
	n := 0
	for round := range 5 {
		for range 100 + round {
			put(s, line(n))
			n++
		}
		if round%2 == 0 {
			s.Flush()
		}
		s.Reopen()
	}
	s.Close(time.Second)
	var all []int
	for i, f := range files {
		ids := wholeLines(t, f.text())
		all = append(all, ids...)
		if i < len(files)-1 && !f.closed {
			t.Errorf("file %d not closed after reopen", i)
		}
	}
	if len(all) != n {
		t.Fatalf("%d lines in %d files, want %d", len(all), len(files), n)
	}
	for i, id := range all {
		if id != i {
			t.Fatalf("line %d is id %d: lost, repeated or reordered", i, id)
		}
	}
	if st := s.Stats(); st.Reopens != uint64(len(files)-1) || st.Reopens == 0 || len(reopened) != int(st.Reopens) {
		t.Errorf("reopens %d, files %d, reports %d", st.Reopens, len(files), len(reopened))
	}

	// A reopen that fails keeps the old file.
	f := &fakeFile{}
	var got []Report
	s = New(f, Options{Open: func() (File, error) { return nil, syscall.EROFS }, Report: func(r Report) { got = append(got, r) }})
	s.Reopen()
	put(s, line(1))
	s.Close(time.Second)
	if st := s.Stats(); st.ReopenErrors != 1 || st.Written != 1 || f.text() != string(line(1)) {
		t.Errorf("failed reopen: %+v, file %q", st, f.text())
	}
	if len(got) != 1 || got[0].Kind != Reopened || !errors.Is(got[0].Err, syscall.EROFS) {
		t.Errorf("failed reopen reported %+v", got)
	}
}

// Write errors are reported at most once per ReportEvery, with what was
// dropped meanwhile.
func TestSinkReportRate(t *testing.T) {
	now := time.Unix(1e9, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	f := &fakeFile{failErr: syscall.ENOSPC}
	var reports []Report
	s := New(f, Options{Report: func(r Report) { reports = append(reports, r) }, now: clock})
	n := 0
	for range 120 { // two minutes of a write a second
		put(s, line(n))
		n++
		s.Flush()
		waitHandled(t, s, uint64(n))
		advance(time.Second)
	}
	f.set(func(f *fakeFile) { f.failErr = nil })
	put(s, line(n))
	s.Close(time.Second)
	if len(reports) != 3 {
		t.Fatalf("reports %+v: want failures at 0s and 60s, then the recovery", reports)
	}
	want := []Report{{Kind: WriteFailed, Errors: 1, Dropped: 1}, {Kind: WriteFailed, Errors: 60, Dropped: 60}, {Kind: Resumed, Errors: 59, Dropped: 59}}
	for i, r := range reports {
		r.Err = nil
		if r != want[i] {
			t.Errorf("report %d: %+v, want %+v", i, r, want[i])
		}
	}
}

// A pipe whose reader never reads: Close gives up at its timeout through
// the write deadline, counting the lines as dropped.
func TestSinkCloseStalledPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s := New(w, Options{QueueBytes: 1 << 20})
	n := 0
	for range 3000 { // more than the pipe's 64 KiB
		put(s, line(n))
		n++
	}
	s.Flush()
	start := time.Now()
	err = s.Close(200 * time.Millisecond)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
	st := s.Stats()
	if err != nil || st.Written+st.DroppedWriteError != uint64(n) || st.DroppedWriteError == 0 {
		t.Errorf("Close: %v, %+v of %d lines", err, st, n)
	}
}

func TestWriteDoesNotAllocate(t *testing.T) {
	s := New(&fakeFile{}, Options{})
	defer s.Close(time.Second)
	l := line(7)
	if a := testing.AllocsPerRun(1000, func() { put(s, l) }); a != 0 {
		t.Errorf("Write allocates %v times", a)
	}
}

func TestOpenFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ path, want string }{
		{dir, "is a directory"},
		{"/proc/version", "not a log file"},
		{"/proc/sys/net/ipv4/tcp_fin_timeout", "not a log file"},
		{"/dev/full", "no space left on device"},
		{filepath.Join(dir, "no/such/dir/x.jsonl"), "no such file or directory"},
	} {
		if f, err := OpenFile(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("OpenFile(%s): %v, want %q", tc.path, err, tc.want)
			if f != nil {
				f.Close()
			}
		}
	}
	// Append mode: after a copytruncate, lines start at 0, no hole.
	path := filepath.Join(dir, "log.jsonl")
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := New(f, Options{})
	put(s, line(1))
	s.Flush()
	waitHandled(t, s, 1)
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	put(s, line(2))
	s.Close(time.Second)
	if b, _ := os.ReadFile(path); !bytes.Equal(b, line(2)) {
		t.Errorf("after truncation the file is %q", b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640&^umask() {
		t.Errorf("mode %v", fi.Mode())
	}
}

func umask() os.FileMode {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return os.FileMode(m)
}

func BenchmarkWrite(b *testing.B) {
	s := New(&fakeFile{}, Options{})
	defer s.Close(time.Second)
	l := bytes.Repeat([]byte("x"), 700)
	l[699] = '\n'
	b.SetBytes(int64(len(l)))
	for b.Loop() {
		put(s, l)
	}
}
