package main

// The agent's record log failing under it: a full disk (a 1 MiB tmpfs),
// a FIFO nobody reads, SIGHUP reopens under churn, paths that cannot be
// written. The agent must keep tracing and serving, count every record it
// could not write, never tear a line, and resume by itself.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
)

// tmpfs mounts a tmpfs of size bytes (options added) on a new directory,
// unmounted at the end.
func tmpfs(t *testing.T, size int, opts ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data := strings.Join(append([]string{fmt.Sprintf("size=%d", size)}, opts...), ",")
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, data); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// logStats is what /metrics says of the log.
type logStats struct {
	written, queueFull, writeError, writeErrors, reopens, reopenErrors, closed float64
}

func (s logStats) handled() float64 { return s.written + s.queueFull + s.writeError }

func readLogStats(mfs map[string]*dto.MetricFamily) logStats {
	return logStats{
		written:      metricSum(mfs, "tcpfsm_log_records_written_total"),
		queueFull:    metricSum(mfs, "tcpfsm_log_records_dropped_total", "reason", "queue_full"),
		writeError:   metricSum(mfs, "tcpfsm_log_records_dropped_total", "reason", "write_error"),
		writeErrors:  metricSum(mfs, "tcpfsm_log_write_errors_total"),
		reopens:      metricSum(mfs, "tcpfsm_log_reopens_total", "result", "ok"),
		reopenErrors: metricSum(mfs, "tcpfsm_log_reopens_total", "result", "error"),
		closed:       metricSum(mfs, "tcpfsm_connections_closed_total"),
	}
}

// churn makes n connections in ns (RST-closed: no TIME_WAIT, both
// records finished at once) and returns their client ports.
func churn(t *testing.T, ns *nettest.NS, ln *net.TCPListener, n int) []int {
	t.Helper()
	var ports []int
	if _, err := ns.Churn(ln, n, nil, func(p int) { ports = append(ports, p) }); err != nil {
		t.Fatalf("churn: %v", err)
	}
	return ports
}

// waitLogged waits until the agent has handled (written or dropped) want
// records and returns the log's metrics then.
func waitLogged(t *testing.T, a *agentRun, want float64) logStats {
	t.Helper()
	var st logStats
	a.waitMetric(t, fmt.Sprintf("%v log records handled", want), func(mfs map[string]*dto.MetricFamily) bool {
		st = readLogStats(mfs)
		return st.handled() >= want && metricSum(mfs, "tcpfsm_log_queue_bytes") == 0
	})
	return st
}

// wholeJSONLines checks that every line of a log is a whole JSON object and
// returns the connection records.
func wholeJSONLines(t *testing.T, data []byte) []logRecord {
	t.Helper()
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Errorf("log ends in a torn line: %q", data[max(len(data)-80, 0):])
	}
	if bytes.IndexByte(data, 0) >= 0 {
		t.Errorf("log holds NUL bytes (a hole)")
	}
	return records(t, data)
}

func checkServing(t *testing.T, a *agentRun) {
	t.Helper()
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := a.get(t, p, "", ""); code != http.StatusOK {
			t.Errorf("%s: %d %s", p, code, body)
		}
	}
}

// A 1 MiB disk fills under churn: the agent keeps serving and counting
// connections, every record is written whole or counted dropped (exactly:
// two per connection), the file holds only whole JSON lines, write errors
// are said once on stderr; space freed, records are written again.
func TestAgentLogDiskFull(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	disk := tmpfs(t, 1<<20)
	// Most of the disk taken: the log gets about 300 KiB.
	filler := filepath.Join(disk, "filler")
	if err := os.WriteFile(filler, make([]byte, 700<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(disk, "records.jsonl")
	a := startAgent(t, bin, agentOptions{args: append([]string{"--netns", ns.Path(), "--log.file", log}, small...)})
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")

	conns := 0
	for round := 0; round < 6; round++ {
		conns += len(churn(t, ns, ln, 250))
		st := waitLogged(t, a, float64(2*conns))
		if st.closed < float64(2*conns) {
			t.Fatalf("round %d: %v connections closed counted, want %d", round, st.closed, 2*conns)
		}
		checkServing(t, a)
	}
	full := waitLogged(t, a, float64(2*conns))
	if full.writeError == 0 || full.writeErrors == 0 {
		t.Fatalf("the disk never filled: %+v", full)
	}
	if full.handled() != float64(2*conns) || full.queueFull != 0 {
		t.Errorf("%d records (2 per connection): written %v + dropped %v (write error) + %v (queue full)",
			2*conns, full.written, full.writeError, full.queueFull)
	}
	data, _ := os.ReadFile(log)
	if n := len(wholeJSONLines(t, data)); float64(n) != full.written {
		t.Errorf("the file holds %d records, the agent says %v written", n, full.written)
	}
	t.Logf("full disk: %d records, %v written (%d bytes), %v dropped in %v failed writes", 2*conns, full.written, len(data), full.writeError, full.writeErrors)

	// Space again: new records are written, with no help.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	more := churn(t, ns, ln, 100)
	after := waitLogged(t, a, float64(2*(conns+len(more))))
	if after.written != full.written+float64(2*len(more)) || after.writeError != full.writeError {
		t.Errorf("after freeing space: written %v (was %v, want +%d), dropped %v (was %v)",
			after.written, full.written, 2*len(more), after.writeError, full.writeError)
	}
	checkServing(t, a)
	if code := a.stop(t); code != 0 {
		t.Fatalf("exit %d\nstderr:\n%s", code, a.stderr)
	}
	data, _ = os.ReadFile(log)
	recs := wholeJSONLines(t, data)
	if float64(len(recs)) != after.written {
		t.Errorf("the file holds %d records, the agent says %v", len(recs), after.written)
	}
	// The last connections are the file's last records, both ends.
	sport := ln.Addr().(*net.TCPAddr).Port
	ends := map[int]int{}
	for _, r := range recs[max(len(recs)-2*len(more), 0):] {
		if r.Role == "active" && r.Rport == sport {
			ends[r.Lport]++
		}
		if r.Role == "passive" && r.Lport == sport {
			ends[r.Rport]++
		}
	}
	for _, p := range more {
		ends[p] -= 2
	}
	for p, n := range ends {
		if n != 0 {
			t.Errorf("connections from port %d after the space was freed: %+d records", p, n)
		}
	}
	stderr := a.stderr.String()
	if n := strings.Count(stderr, `"msg":"log write failed`); n != 1 {
		t.Errorf("%d write failure reports, want 1 (at most once a minute):\n%s", n, stderr)
	}
	if !strings.Contains(stderr, "no space left on device") || strings.Count(stderr, `"msg":"log writes succeed again"`) != 1 {
		t.Errorf("stderr does not say why, or that it resumed:\n%s", stderr)
	}
	want := fmt.Sprintf(`"msg":"stopped","records_logged":%d,"records_dropped":%d,`, len(recs), int(after.writeError))
	if !strings.Contains(stderr, want) {
		t.Errorf("stop line: want %s in\n%s", want, stderr)
	}
}

// A FIFO whose reader never reads: the event path goes on (connections
// counted), the queue stays within logs.queue_bytes and the rest is
// dropped and counted; SIGTERM still ends the agent in bounded time.
func TestAgentLogStalledFIFO(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	fifo := filepath.Join(t.TempDir(), "records.fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// A reader that never reads: the agent's open does not block, its
	// writes do once the pipe's 64 KiB are full.
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const queue = 64 << 10
	a := startAgent(t, bin, agentOptions{args: append([]string{"--netns", ns.Path(), "--log.file", fifo,
		"--log.queue-bytes", fmt.Sprint(queue)}, small...)})
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	conns := 0
	var st logStats
	for round := 0; round < 4; round++ {
		conns += len(churn(t, ns, ln, 500))
		mfs := a.waitMetric(t, "every connection counted", func(mfs map[string]*dto.MetricFamily) bool {
			st = readLogStats(mfs)
			return st.closed >= float64(2*conns) && st.handled()+metricSum(mfs, "tcpfsm_log_queue_bytes") > 0
		})
		if q := metricSum(mfs, "tcpfsm_log_queue_bytes"); q > queue {
			t.Errorf("queue %v bytes, bound %d", q, queue)
		}
		if l := metricSum(mfs, "tcpfsm_log_queue_limit_bytes"); l != queue {
			t.Errorf("queue limit %v, want %d", l, queue)
		}
		checkServing(t, a)
	}
	// Written: what the pipe's 64 KiB took before it stalled (records
	// are over 500 bytes).
	if st.queueFull == 0 || st.written > 64<<10/500 {
		t.Errorf("stalled pipe: %+v, want drops for a full queue and no more written than the pipe holds", st)
	}
	// Nothing more than fits in the pipe and the queue got out of the drops.
	if kept := float64(2*conns) - st.queueFull; kept*400 > 3*queue+64<<10 {
		t.Errorf("%v records not dropped: more than the queue and the pipe hold", kept)
	}
	start := time.Now()
	if code := a.stop(t); code != 0 {
		t.Fatalf("exit %d\nstderr:\n%s", code, a.stderr)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("SIGTERM took %v with a stalled log", d)
	}
	t.Logf("%d records: %v dropped for a full queue; stop took %v", 2*conns, st.queueFull, time.Since(start).Round(time.Millisecond))
	// What reached the pipe is whole lines, but for the write given up
	// at exit.
	buf := make([]byte, 1<<20)
	n, _ := r.Read(buf)
	sc := bufio.NewScanner(bytes.NewReader(buf[:bytes.LastIndexByte(buf[:n], '\n')+1]))
	lines := 0
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("pipe line %d is no JSON: %v", lines, err)
		}
		lines++
	}
	if lines == 0 {
		t.Error("nothing reached the pipe")
	}
}

// SIGHUP under churn, with the file renamed before each: every record is
// in exactly one of the files, none lost, none twice, and the agent's
// counters agree.
func TestAgentSIGHUPReopensUnderChurn(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	a, log := agentIn(t, bin, ns)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	sport := ln.Addr().(*net.TCPAddr).Port

	stop := make(chan struct{})
	ports := make(chan []int, 1)
	churnErr := make(chan error, 1)
	go func() {
		var ps []int
		_, err := ns.Churn(ln, 30000, stop, func(p int) { ps = append(ps, p) })
		churnErr <- err
		ports <- ps
	}()
	const rotations = 8
	files := []string{log}
	for i := 1; i <= rotations; i++ {
		time.Sleep(150 * time.Millisecond)
		old := fmt.Sprintf("%s.%d", log, i)
		if err := os.Rename(log, old); err != nil {
			t.Fatal(err)
		}
		files = append(files, old)
		if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		a.waitMetric(t, fmt.Sprintf("reopen %d", i), func(mfs map[string]*dto.MetricFamily) bool {
			return readLogStats(mfs).reopens >= float64(i)
		})
	}
	time.Sleep(150 * time.Millisecond)
	close(stop)
	if err := <-churnErr; err != nil {
		t.Fatalf("churn: %v", err)
	}
	made := <-ports
	st := waitLogged(t, a, float64(2*len(made)))
	if code := a.stop(t); code != 0 {
		t.Fatalf("exit %d\nstderr:\n%s", code, a.stderr)
	}
	seen := map[uint64]int{}
	ends := map[int]int{}
	total := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		recs := wholeJSONLines(t, data)
		if len(recs) == 0 {
			t.Errorf("%s: empty", filepath.Base(f))
		}
		for _, r := range recs {
			seen[r.ID]++
			total++
			if r.Role == "active" && r.Rport == sport {
				ends[r.Lport]++
			}
			if r.Role == "passive" && r.Lport == sport {
				ends[r.Rport]++
			}
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("record %d in the logs %d times", id, n)
		}
	}
	// Ports come back (no TIME_WAIT after a reset): two records per use.
	for _, p := range made {
		ends[p] -= 2
	}
	missing := 0
	for _, n := range ends {
		if n != 0 {
			missing++
		}
	}
	if missing > 0 || total != 2*len(made) || float64(total) != st.written || st.writeError+st.queueFull != 0 {
		t.Errorf("%d connections: %d records in %d files, %d ports with records not two per use, agent: %+v", len(made), total, len(files), missing, st)
	}
	if st.reopens != rotations {
		t.Errorf("reopens %v, want %d", st.reopens, rotations)
	}
	if n := strings.Count(a.stderr.String(), `"msg":"reopened the log file"`); n != rotations {
		t.Errorf("%d reopen lines on stderr, want %d", n, rotations)
	}
	t.Logf("%d connections, %d records across %d files, %d reopens", len(made), total, len(files), rotations)
}

// A log file that cannot be written at start is a configuration error:
// exit 2, one line naming --log.file; nothing is traced.
func TestAgentLogUnwritable(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)
	ro := tmpfs(t, 1<<20, "ro")
	for _, path := range []string{filepath.Join(ro, "records.jsonl"), "/proc/version", t.TempDir(), "/dev/full"} {
		a := startAgent(t, bin, agentOptions{args: []string{"--log.file", path}, fails: true})
		if code := a.wait(t); code != exitUsage {
			t.Errorf("%s: exit %d, want 2\nstderr:\n%s", path, code, a.stderr)
		}
		if s := a.stderr.String(); strings.Count(s, "\n") != 1 || !strings.Contains(s, "--log.file") || !strings.Contains(s, path) {
			t.Errorf("%s: stderr %q", path, s)
		}
	}
}

// Records on stdout, and the reader of stdout goes away (a log shipper
// restarted): a broken pipe is a write error like any other, counted; the
// agent does not die of SIGPIPE, and still stops cleanly.
func TestAgentLogStdoutClosed(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	addr := freeAddr(t)
	cmd := exec.Command(bin, append([]string{"agent", "--web.listen-address", addr, "--netns", ns.Path()}, small...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &agentRun{cmd: cmd, addr: addr, stderr: &stderr, exited: make(chan struct{}), client: &http.Client{Timeout: 5 * time.Second}, scheme: "http"}
	go func() { a.waitErr = cmd.Wait(); close(a.exited) }()
	t.Cleanup(func() {
		select {
		case <-a.exited:
		default:
			_ = cmd.Process.Kill()
			<-a.exited
		}
	})
	var got lockedBuffer
	go func() { _, _ = io.Copy(&got, stdout) }() // ends when the test closes stdout
	a.waitServing(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	churn(t, ns, ln, 50)
	if st := waitLogged(t, a, 100); st.written != 100 {
		t.Fatalf("before: %+v", st)
	}
	stdout.Close() // the reader is gone
	if n := len(records(t, []byte(got.String()))); n != 100 {
		t.Errorf("read %d records from stdout, want 100", n)
	}
	made := 50 + len(churn(t, ns, ln, 200))
	st := waitLogged(t, a, float64(2*made))
	if st.writeError == 0 || st.written < 100 || st.handled() != float64(2*made) {
		t.Errorf("after stdout's reader left: %+v, want write errors and %d records handled", st, 2*made)
	}
	checkServing(t, a)
	if code := a.stop(t); code != 0 {
		t.Fatalf("exit %d\nstderr:\n%s", code, &stderr)
	}
	if !strings.Contains(stderr.String(), "broken pipe") {
		t.Errorf("stderr does not name the broken pipe:\n%s", &stderr)
	}
}
