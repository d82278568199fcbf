package main

// The harness of tcpfsm agent's end-to-end tests on the running kernel: the
// binary started with its flags, its HTTP endpoints scraped and parsed, its
// JSON log read back. The tests, one subject a file: agent_caps_test.go
// (least privilege), agent_prometheus_test.go (promtool, a real Prometheus),
// agent_webconfig_test.go (basic auth, TLS), agent_sigterm_test.go,
// deploy_syscalls_test.go (the systemd unit's system call filter).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// ---- running the agent ----

// lockedBuffer collects a process's output while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type agentOptions struct {
	args   []string             // after "agent --web.listen-address ADDR"
	prefix []string             // a command that runs the binary (capsh, strace)
	sys    *syscall.SysProcAttr // credentials and ambient capabilities
	// fails: do not wait for the agent to serve; it is expected to exit.
	fails bool
	// client for the start-up wait (TLS).
	client *http.Client
	scheme string
}

// small keeps the agent's kernel tables small: a test needs a few hundred
// connections, and preallocating the default 262144-entry table takes
// seconds under qemu's emulation (the 6.1 kernel VM).
var small = []string{"--max-tracked", "4096", "--ring-buffer-bytes", "1048576"}

// notInKernelVM skips a test in the 6.1 kernel VM, whose time limit the
// package shares with the other suites: what it checks does not depend on
// the kernel's version.
func notInKernelVM(t testing.TB) {
	t.Helper()
	if inKernelVM() {
		t.Skip("kernel-independent; runs on the host only (the VM's time is shared)")
	}
}

// agentRun is a running agent.
type agentRun struct {
	cmd            *exec.Cmd
	addr           string // 127.0.0.1:PORT it serves on
	stdout, stderr *lockedBuffer
	exited         chan struct{}
	waitErr        error
	client         *http.Client
	scheme         string
}

// freeAddr returns a loopback address no one listens on now.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startAgent(t testing.TB, bin string, o agentOptions) *agentRun {
	t.Helper()
	a := &agentRun{addr: freeAddr(t), stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, exited: make(chan struct{}),
		client: o.client, scheme: o.scheme}
	if a.client == nil {
		a.client = &http.Client{Timeout: 5 * time.Second}
	}
	if a.scheme == "" {
		a.scheme = "http"
	}
	argv := append(slices.Clone(o.prefix), bin, "agent", "--web.listen-address", a.addr)
	argv = append(argv, o.args...)
	a.cmd = exec.Command(argv[0], argv[1:]...)
	// A process group of its own: a wrapper's children (strace's tracee)
	// go with it at the end.
	sys := &syscall.SysProcAttr{}
	if o.sys != nil {
		c := *o.sys
		sys = &c
	}
	sys.Setpgid = true
	a.cmd.SysProcAttr = sys
	a.cmd.Stdout, a.cmd.Stderr = a.stdout, a.stderr
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	go func() {
		a.waitErr = a.cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-a.exited:
		default:
			// An agent the test did not stop: killed, its exit is the kill's.
			_ = a.cmd.Process.Kill()
			<-a.exited
		}
		// Whatever the agent started in its process group; ESRCH when
		// nothing is left, the usual case.
		_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
	})
	if !o.fails {
		a.waitServing(t)
	}
	return a
}

// waitServing waits until the agent answers HTTP: it attaches its
// programs before it listens.
func (a *agentRun) waitServing(t testing.TB) {
	t.Helper()
	limit := 20 * time.Second
	if inKernelVM() {
		limit = 90 * time.Second // software emulation
	}
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-a.exited:
			t.Fatalf("agent exited before serving: %v\nstderr:\n%s", a.waitErr, a.stderr)
		default:
		}
		resp, err := a.client.Get(a.url("/healthz"))
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not serving within %v: %v\nstderr:\n%s", limit, err, a.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (a *agentRun) url(path string) string { return a.scheme + "://" + a.addr + path }

// get fetches a path, with basic auth when user is set.
func (a *agentRun) get(t testing.TB, path, user, pass string, header ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", a.url(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := a.client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// scrape returns /metrics in the text format, parsed.
func (a *agentRun) scrape(t testing.TB) (map[string]*dto.MetricFamily, []byte) {
	t.Helper()
	code, body := a.get(t, "/metrics", "", "")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return mfs, body
}

// metricSum adds the values of a family's samples whose labels include want.
func metricSum(mfs map[string]*dto.MetricFamily, name string, want ...string) float64 {
	mf := mfs[name]
	if mf == nil {
		return 0
	}
	total := 0.0
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		ok := true
		for i := 0; i+1 < len(want); i += 2 {
			if labels[want[i]] != want[i+1] {
				ok = false
			}
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Untyped != nil:
			total += m.GetUntyped().GetValue()
		case m.Histogram != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total
}

// waitMetric polls /metrics until cond holds, for at most 10 seconds.
func (a *agentRun) waitMetric(t testing.TB, what string, cond func(map[string]*dto.MetricFamily) bool) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mfs, body := a.scrape(t)
		if cond(mfs) {
			return mfs
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not within 10s; /metrics:\n%s\nstderr:\n%s", what, grepTcpfsm(body), a.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func grepTcpfsm(body []byte) string {
	var b strings.Builder
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "tcpfsm_") && !strings.Contains(l, "_bucket") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// stop sends SIGTERM and returns the exit code.
func (a *agentRun) stop(t testing.TB) int {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	return a.wait(t)
}

// wait waits for the agent to exit, for at most 20 seconds.
func (a *agentRun) wait(t testing.TB) int {
	t.Helper()
	select {
	case <-a.exited:
	case <-time.After(20 * time.Second):
		_ = a.cmd.Process.Kill() // the test fails either way
		t.Fatalf("agent did not exit within 20s\nstderr:\n%s", a.stderr)
	}
	if ws, ok := a.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		t.Fatalf("agent died of %v\nstderr:\n%s", ws.Signal(), a.stderr)
	}
	return a.cmd.ProcessState.ExitCode()
}

// logRecord is what the tests read of a connection record.
type logRecord struct {
	Time      string   `json:"time"`
	Level     string   `json:"level"`
	Msg       string   `json:"msg"`
	ID        uint64   `json:"id"`
	Role      string   `json:"role"`
	Lport     int      `json:"lport"`
	Rport     int      `json:"rport"`
	Netns     uint32   `json:"netns"`
	Close     string   `json:"close"`
	ClosedBy  string   `json:"closed_by"`
	Seeded    bool     `json:"seeded"`
	Anomalies []string `json:"anomalies"`
	Owner     *struct {
		Pid  int    `json:"pid"`
		Comm string `json:"comm"`
	} `json:"owner"`
	TimeWait *struct {
		End string `json:"end"`
	} `json:"time_wait"`
}

// records parses a log: every line must be a JSON connection record.
func records(t testing.TB, data []byte) []logRecord {
	t.Helper()
	var out []logRecord
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var r logRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("log line is no JSON: %v: %q", err, sc.Text())
		}
		if r.Msg != "connection" || r.Level != "INFO" || r.Time == "" {
			t.Fatalf("log line is no connection record: %q", sc.Text())
		}
		out = append(out, r)
	}
	return out
}

func readRecords(t testing.TB, path string) []logRecord {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return records(t, b)
}
