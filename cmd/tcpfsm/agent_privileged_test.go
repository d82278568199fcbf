package main

// End-to-end tests of tcpfsm agent on the running kernel: the binary, in a
// fresh network namespace per test, with traffic the test makes there.
// promtool on a live scrape, a real Prometheus evaluating every query of
// deploy/, least privilege (CAP_BPF and CAP_PERFMON only), what each further
// capability adds, basic auth and TLS, SIGTERM during traffic, and the
// systemd unit's system call filter.

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protodelim"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
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
			a.cmd.Process.Kill()
			<-a.exited
		}
		syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
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
		a.cmd.Process.Kill()
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

// ---- traffic in the test's namespace ----

// server accepts on ln until the test ends: each connection is read to
// EOF (or a reset), answered with reply bytes and closed; the remote port
// of each handled connection is sent on the returned channel.
func server(t testing.TB, ln *net.TCPListener, reply int) <-chan int {
	done := make(chan int, 4096)
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(io.Discard, c)
				if reply > 0 {
					c.Write(make([]byte, reply))
				}
				c.Close()
				done <- c.RemoteAddr().(*net.TCPAddr).Port
			}()
		}
	}()
	return done
}

// graceful makes a connection that the client closes first: it sends
// send bytes, shuts down its side, reads the reply to EOF and closes. The
// client's end goes through TIME_WAIT. It returns the client's port.
func graceful(t testing.TB, ns *nettest.NS, addr string, send int) int {
	t.Helper()
	c, err := ns.Dial("tcp4", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(make([]byte, send)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatal(err)
	}
	port := c.LocalAddr().(*net.TCPAddr).Port
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

// refused connects to a port nothing listens on.
func refused(t testing.TB, ns *nettest.NS) {
	t.Helper()
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if c, err := ns.Dial("tcp4", addr); !nettest.IsRefused(err) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial %s: %v, want refused", addr, err)
	}
}

// reset makes a connection the client aborts with a RST (SO_LINGER 0).
func reset(t testing.TB, ns *nettest.NS, addr string) {
	t.Helper()
	c, err := ns.Dial("tcp4", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c.Write([]byte("x"))
	c.SetLinger(0)
	c.Close()
}

// mixed is one round of traffic of every kind: graceful (client first,
// into TIME_WAIT), refused, reset. It returns how many of each.
type mixCounts struct{ graceful, refused, reset int }

func mixed(t testing.TB, ns *nettest.NS, addr string) mixCounts {
	t.Helper()
	n := mixCounts{graceful: 8, refused: 3, reset: 3}
	for i := 0; i < n.graceful; i++ {
		graceful(t, ns, addr, 1000+i)
	}
	for i := 0; i < n.refused; i++ {
		refused(t, ns)
	}
	for i := 0; i < n.reset; i++ {
		reset(t, ns, addr)
	}
	return n
}

// ---- capabilities ----

const capsBPFPerfmon = uint64(1)<<unix.CAP_BPF | uint64(1)<<unix.CAP_PERFMON

// asNobody runs a process as uid/gid 65534 whose only capabilities are
// the ambient ones given: after exec they are its permitted and effective
// sets, as systemd's AmbientCapabilities= does for a service user.
func asNobody(caps ...uintptr) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}},
		AmbientCaps: caps,
	}
}

// publicDir is a directory uid 65534 may enter, holding a copy of the
// binary and a log file owned by uid (65534 or 0: an agent without
// CAP_DAC_OVERRIDE opens only its own files).
func publicDir(t testing.TB, bin string, uid int) (dir, binCopy, logFile string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "tcpfsm-agent-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	binCopy = filepath.Join(dir, "tcpfsm")
	if err := os.WriteFile(binCopy, data, 0o755); err != nil {
		t.Fatal(err)
	}
	logFile = filepath.Join(dir, "connections.jsonl")
	if err := os.WriteFile(logFile, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(logFile, uid, uid); err != nil {
		t.Fatal(err)
	}
	return dir, binCopy, logFile
}

// procCaps reads a process's capability sets from /proc/PID/status.
func procCaps(t testing.TB, pid int) map[string]uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	caps := map[string]uint64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.HasPrefix(k, "Cap") {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			caps[k] = n
		}
	}
	return caps
}

// capshKeeping runs a command as uid 0 whose bounding set holds only the
// given capabilities (and no inheritable ones): after exec, root's
// permitted and effective sets are the bounding set.
func capshKeeping(t testing.TB, keep ...int) []string {
	t.Helper()
	capsh := needTool(t, "capsh", "libcap2-bin")
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		t.Fatal(err)
	}
	last, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	var drop []string
	for c := 0; c <= last; c++ {
		if !slices.Contains(keep, c) {
			drop = append(drop, strconv.Itoa(c))
		}
	}
	return []string{capsh, "--inh=", "--drop=" + strings.Join(drop, ","), "--", "-c", `exec "$0" "$@"`}
}

// Least privilege: with CAP_BPF and CAP_PERFMON only, as an unprivileged
// user (systemd's DynamicUser= and AmbientCapabilities=) and as uid 0 with
// every other capability out of the bounding set (Kubernetes' drop ALL, add
// BPF and PERFMON), the agent traces, counts and logs.
func TestAgentLeastPrivilege(t *testing.T) {
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	for _, tc := range []struct {
		name   string
		nobody bool
	}{{"uid 65534, ambient CAP_BPF CAP_PERFMON", true}, {"uid 0, bounding set CAP_BPF CAP_PERFMON", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ns := nettest.NewNS(t)
			uid := 0
			if tc.nobody {
				uid = 65534
			}
			_, binCopy, logFile := publicDir(t, bin, uid)
			o := agentOptions{args: append([]string{"--netns", strconv.FormatUint(uint64(ns.Inode), 10), "--log.file", logFile}, small...)}
			if tc.nobody {
				o.sys = asNobody(unix.CAP_BPF, unix.CAP_PERFMON)
			} else {
				o.prefix = capshKeeping(t, unix.CAP_BPF, unix.CAP_PERFMON)
			}
			a := startAgent(t, binCopy, o)
			caps := procCaps(t, a.cmd.Process.Pid)
			if caps["CapEff"] != capsBPFPerfmon || caps["CapPrm"] != capsBPFPerfmon {
				t.Fatalf("agent's capabilities: CapEff %#x CapPrm %#x, want %#x (CAP_BPF, CAP_PERFMON)",
					caps["CapEff"], caps["CapPrm"], capsBPFPerfmon)
			}
			st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
			wantUID := "0"
			if tc.nobody {
				wantUID = "65534"
			}
			if !regexp.MustCompile(`(?m)^Uid:\s+` + wantUID + `\s`).Match(st) {
				t.Errorf("agent's uid is not %s:\n%s", wantUID, st)
			}
			t.Logf("CapEff %#x CapPrm %#x CapBnd %#x CapAmb %#x", caps["CapEff"], caps["CapPrm"], caps["CapBnd"], caps["CapAmb"])

			before, _ := a.scrape(t)
			ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
			done := server(t, ln, 500)
			var ports []int
			for i := 0; i < 5; i++ {
				ports = append(ports, graceful(t, ns, ln.Addr().String(), 100))
				<-done
			}
			refused(t, ns)
			srvPort := ln.Addr().(*net.TCPAddr).Port
			a.waitMetric(t, "10 closes and a refusal", func(m map[string]*dto.MetricFamily) bool {
				return metricSum(m, "tcpfsm_connections_closed_total")-metricSum(before, "tcpfsm_connections_closed_total") >= 11 &&
					metricSum(m, "tcpfsm_connect_failures_total", "reason", "refused") >= 1
			})
			if code := a.stop(t); code != 0 {
				t.Fatalf("exit %d\n%s", code, a.stderr)
			}
			if strings.Contains(a.stderr.String(), `"level":"ERROR"`) {
				t.Errorf("errors logged:\n%s", a.stderr)
			}
			recs := readRecords(t, logFile)
			have := map[[2]int]logRecord{}
			for _, r := range recs {
				have[[2]int{r.Lport, r.Rport}] = r
			}
			for _, p := range ports {
				c, cok := have[[2]int{p, srvPort}]
				s, sok := have[[2]int{srvPort, p}]
				if !cok || !sok || c.Role != "active" || s.Role != "passive" || c.Close != "graceful" || s.Close != "graceful" {
					t.Errorf("port %d: client record %+v (%v), server record %+v (%v)", p, c, cok, s, sok)
				}
				if c.Netns != ns.Inode {
					t.Errorf("record in netns %d, want %d", c.Netns, ns.Inode)
				}
			}
		})
	}
}

// Without CAP_BPF (or CAP_PERFMON) the agent exits 1 at once and says
// which capability it lacks.
func TestAgentMissingCapability(t *testing.T) {
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	_, binCopy, logFile := publicDir(t, bin, 65534)
	for _, tc := range []struct {
		has     uintptr
		missing string
	}{{unix.CAP_PERFMON, "CAP_BPF"}, {unix.CAP_BPF, "CAP_PERFMON"}} {
		a := startAgent(t, binCopy, agentOptions{args: append([]string{"--log.file", logFile}, small...), sys: asNobody(tc.has), fails: true})
		code := a.wait(t)
		msg := a.stderr.String()
		if code != exitError || !strings.Contains(msg, tc.missing) || strings.Count(msg, "\n") != 1 {
			t.Errorf("without %s: exit %d, stderr %q; want exit 1 and one line naming %s", tc.missing, code, msg, tc.missing)
		}
	}
}

// bindNetNS makes the namespace reachable by path for any user: a bind
// mount of it on a file in dir (as ip netns add does under /run/netns).
func bindNetNS(t testing.TB, ns *nettest.NS, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "netns")
	if err := os.WriteFile(p, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(ns.Path(), p, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount the namespace: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(p, unix.MNT_DETACH) })
	return p
}

// What each capability beyond CAP_BPF and CAP_PERFMON adds, as
// deploy/README.md says, for an agent running as an unprivileged user.
func TestAgentCapabilityClaims(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)

	// BPF run-time statistics (BPF_ENABLE_STATS) need CAP_SYS_ADMIN.
	t.Run("bpf stats need CAP_SYS_ADMIN", func(t *testing.T) {
		for _, tc := range []struct {
			caps  []uintptr
			stats bool
		}{{[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON}, false}, {[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_ADMIN}, true}} {
			ns := nettest.NewNS(t)
			_, binCopy, logFile := publicDir(t, bin, 65534)
			a := startAgent(t, binCopy, agentOptions{args: []string{"--netns", fmt.Sprint(ns.Inode), "--log.file", logFile,
				"--metrics.bpf-stats"}, sys: asNobody(tc.caps...)})
			ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
			done := server(t, ln, 0)
			graceful(t, ns, ln.Addr().String(), 10)
			<-done
			mfs := a.waitMetric(t, "a close", func(m map[string]*dto.MetricFamily) bool {
				return metricSum(m, "tcpfsm_connections_closed_total") >= 2
			})
			warned := strings.Contains(a.stderr.String(), "BPF run-time statistics unavailable (needs CAP_SYS_ADMIN)")
			if warned == tc.stats {
				t.Errorf("caps %v: warning logged %v, want %v\n%s", tc.caps, warned, !tc.stats, a.stderr)
			}
			// Other processes may turn statistics on for everyone; only
			// the agent's own can be relied on.
			if secs := metricSum(mfs, "tcpfsm_bpf_program_run_seconds_total"); tc.stats && secs <= 0 {
				t.Errorf("with CAP_SYS_ADMIN: tcpfsm_bpf_program_run_seconds_total %v, want > 0", secs)
			}
			a.stop(t)
		}
	})

	// sock_diag in a network namespace goes through setns(), which needs
	// CAP_SYS_ADMIN: without it, a connection older than the agent is not
	// in the start snapshot. Naming its owner reads /proc/PID/fd of a more
	// privileged process of another user: CAP_SYS_PTRACE and
	// CAP_DAC_READ_SEARCH.
	t.Run("snapshot needs CAP_SYS_ADMIN, owners CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH", func(t *testing.T) {
		for _, tc := range []struct {
			caps          []uintptr
			seeded, owner bool
		}{
			{[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON}, false, false},
			{[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_ADMIN}, true, false},
			{[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_ADMIN, unix.CAP_SYS_PTRACE}, true, false},
			{[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_ADMIN, unix.CAP_SYS_PTRACE, unix.CAP_DAC_READ_SEARCH}, true, true},
		} {
			ns := nettest.NewNS(t)
			dir, binCopy, logFile := publicDir(t, bin, 65534)
			nsFile := bindNetNS(t, ns, dir)
			// A connection older than the agent; this process (root, every
			// capability) holds both ends.
			ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
			cli, err := ns.Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			srv, err := ln.AcceptTCP()
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			a := startAgent(t, binCopy, agentOptions{args: []string{"--netns", nsFile, "--log.file", logFile}, sys: asNobody(tc.caps...)})
			// The client aborts: the server's end goes to CLOSE on the RST,
			// in softirq, with no system call of its owner to name it.
			cli.SetLinger(0)
			cli.Close()
			a.waitMetric(t, "the reset", func(m map[string]*dto.MetricFamily) bool {
				return metricSum(m, "tcpfsm_connections_closed_total") >= 1
			})
			if code := a.stop(t); code != 0 {
				t.Fatalf("exit %d\n%s", code, a.stderr)
			}
			srvPort, cliPort := ln.Addr().(*net.TCPAddr).Port, cli.LocalAddr().(*net.TCPAddr).Port
			var rec *logRecord
			recs := readRecords(t, logFile)
			for i := range recs {
				if recs[i].Lport == srvPort && recs[i].Rport == cliPort {
					rec = &recs[i]
				}
			}
			if rec == nil {
				t.Fatalf("caps %v: no record of the server's end; log: %+v", tc.caps, recs)
			}
			// The agent warns about each missing capability.
			for c, name := range map[uintptr]string{unix.CAP_SYS_ADMIN: "CAP_SYS_ADMIN", unix.CAP_SYS_PTRACE: "CAP_SYS_PTRACE"} {
				warned := strings.Contains(a.stderr.String(), `"level":"WARN","msg":"without `+name)
				if warned == slices.Contains(tc.caps, c) {
					t.Errorf("caps %v: warning about %s %v, want %v\n%s", tc.caps, name, warned, !warned, a.stderr)
				}
			}
			owner := rec.Owner != nil && rec.Owner.Pid == os.Getpid()
			if rec.Seeded != tc.seeded || owner != tc.owner {
				t.Errorf("caps %v: seeded %v owner %+v; want seeded %v, owner known %v", tc.caps, rec.Seeded, rec.Owner, tc.seeded, tc.owner)
			}
		}
	})

	// The classic tracepoint needs tracefs; mounting it needs
	// CAP_SYS_ADMIN. In a mount namespace of its own without tracefs, as
	// uid 0 with a bounding set of CAP_BPF CAP_PERFMON (+ CAP_SYS_ADMIN).
	t.Run("mounting tracefs needs CAP_SYS_ADMIN", func(t *testing.T) {
		unshare := needTool(t, "unshare", "util-linux")
		for _, tc := range []struct {
			keep   []int
			attach bool
		}{{[]int{unix.CAP_BPF, unix.CAP_PERFMON}, false}, {[]int{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_ADMIN}, true}} {
			ns := nettest.NewNS(t)
			prefix := append([]string{unshare, "--mount", "--propagation", "private", "sh", "-c",
				`umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug/tracing 2>/dev/null; ` +
					`if [ -e /sys/kernel/tracing/events ]; then echo tracefs still mounted >&2; exit 9; fi; exec "$@"`, "sh"},
				capshKeeping(t, tc.keep...)...)
			a := startAgent(t, bin, agentOptions{prefix: prefix, fails: !tc.attach,
				args: []string{"--attach", "tracepoint", "--netns", fmt.Sprint(ns.Inode), "--log.file", filepath.Join(t.TempDir(), "log")}})
			if tc.attach {
				if !strings.Contains(a.stderr.String(), `"hook":"tracepoint"`) {
					t.Errorf("with CAP_SYS_ADMIN: not attached to the tracepoint:\n%s", a.stderr)
				}
				a.stop(t)
				continue
			}
			code := a.wait(t)
			if code != exitError || !strings.Contains(a.stderr.String(), "tracefs") || !strings.Contains(a.stderr.String(), "CAP_SYS_ADMIN") {
				t.Errorf("without CAP_SYS_ADMIN: exit %d, stderr %q; want exit 1 naming tracefs and CAP_SYS_ADMIN", code, a.stderr)
			}
		}
	})
}

// ---- promtool on a live scrape ----

func TestAgentPromtoolCheckMetrics(t *testing.T) {
	nettest.RequireBPF(t)
	promtool := needTool(t, "promtool", "prometheus")
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	a := startAgent(t, bin, agentOptions{args: []string{"--netns", ns.Path(), "--log.file", filepath.Join(t.TempDir(), "log"),
		"--metrics.labels", "port,comm"}})
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	server(t, ln, 300)
	n := mixed(t, ns, ln.Addr().String())
	a.waitMetric(t, "the traffic's closes", func(m map[string]*dto.MetricFamily) bool {
		return metricSum(m, "tcpfsm_connections_closed_total", "role", "active") >= float64(n.graceful+n.refused+n.reset) &&
			metricSum(m, "tcpfsm_connections_closed_total", "role", "passive") >= float64(n.graceful+n.reset)
	})
	mfs, body := a.scrape(t)
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	// Every metric the agent promises is there, with its type.
	for name, typ := range map[string]dto.MetricType{
		"tcpfsm_state_transitions_total":            dto.MetricType_COUNTER,
		"tcpfsm_connections_opened_total":           dto.MetricType_COUNTER,
		"tcpfsm_connections_closed_total":           dto.MetricType_COUNTER,
		"tcpfsm_connect_failures_total":             dto.MetricType_COUNTER,
		"tcpfsm_handshake_duration_seconds":         dto.MetricType_HISTOGRAM,
		"tcpfsm_connection_duration_seconds":        dto.MetricType_HISTOGRAM,
		"tcpfsm_state_duration_seconds":             dto.MetricType_HISTOGRAM,
		"tcpfsm_connections":                        dto.MetricType_GAUGE,
		"tcpfsm_bytes_sent_total":                   dto.MetricType_COUNTER,
		"tcpfsm_bytes_received_total":               dto.MetricType_COUNTER,
		"tcpfsm_resets_total":                       dto.MetricType_COUNTER,
		"tcpfsm_syn_retransmits_total":              dto.MetricType_COUNTER,
		"tcpfsm_events_total":                       dto.MetricType_COUNTER,
		"tcpfsm_events_lost_total":                  dto.MetricType_COUNTER,
		"tcpfsm_tracked_connections":                dto.MetricType_GAUGE,
		"tcpfsm_evictions_total":                    dto.MetricType_COUNTER,
		"tcpfsm_attribution_misses_total":           dto.MetricType_COUNTER,
		"tcpfsm_anomalies_total":                    dto.MetricType_COUNTER,
		"tcpfsm_build_info":                         dto.MetricType_GAUGE,
		"tcpfsm_bpf_program_runs_total":             dto.MetricType_COUNTER,
		"tcpfsm_bpf_program_run_seconds_total":      dto.MetricType_COUNTER,
		"tcpfsm_bpf_program_recursion_misses_total": dto.MetricType_COUNTER,
		"tcpfsm_bpf_nested_runs_total":              dto.MetricType_COUNTER,
		"tcpfsm_ephemeral_ports":                    dto.MetricType_GAUGE,
		"go_goroutines":                             dto.MetricType_GAUGE,
		"process_cpu_seconds_total":                 dto.MetricType_COUNTER,
	} {
		if mf := mfs[name]; mf == nil || mf.GetType() != typ {
			t.Errorf("%s: %v, want a %v", name, mf.GetType(), typ)
		}
	}
	// The label conventions: lower-case states, the fixed label values.
	states := map[string]bool{}
	for _, m := range mfs["tcpfsm_connections"].GetMetric() {
		states[m.GetLabel()[0].GetValue()] = true
	}
	for _, s := range []string{"syn_sent", "syn_recv", "established", "fin_wait1", "fin_wait2", "time_wait", "close_wait", "last_ack", "listen", "closing"} {
		if !states[s] {
			t.Errorf("tcpfsm_connections has no state=%q: %v", s, states)
		}
	}
	if len(states) != 10 {
		t.Errorf("tcpfsm_connections states: %v, want the 10", states)
	}
	labelValues := func(name, label string) []string {
		var vs []string
		for _, m := range mfs[name].GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && !slices.Contains(vs, lp.GetValue()) {
					vs = append(vs, lp.GetValue())
				}
			}
		}
		slices.Sort(vs)
		return vs
	}
	for _, c := range []struct {
		name, label string
		want        []string
	}{
		{"tcpfsm_connect_failures_total", "reason", []string{"other", "refused", "reset", "timeout"}},
		{"tcpfsm_events_lost_total", "reason", []string{"program_busy", "ring_buffer_full"}},
		{"tcpfsm_resets_total", "direction", []string{"received", "sent"}},
	} {
		if got := labelValues(c.name, c.label); !slices.Equal(got, c.want) {
			t.Errorf("%s{%s}: %v, want %v", c.name, c.label, got, c.want)
		}
	}
	// Optional labels: the listening port on passive connections, comm.
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	if metricSum(mfs, "tcpfsm_connections_opened_total", "role", "passive", "port", port) < float64(n.graceful) {
		t.Errorf("no passive opens labelled port=%s:\n%s", port, grepTcpfsm(body))
	}
	if metricSum(mfs, "tcpfsm_connections_closed_total", "kind", "refused") < float64(n.refused) ||
		metricSum(mfs, "tcpfsm_connect_failures_total", "reason", "refused") < float64(n.refused) ||
		metricSum(mfs, "tcpfsm_resets_total", "direction", "sent") < float64(n.reset) ||
		metricSum(mfs, "tcpfsm_connections", "state", "time_wait") < 1 {
		t.Errorf("counters do not show the traffic:\n%s", grepTcpfsm(body))
	}
	// Buckets 1us x 4^k.
	h := mfs["tcpfsm_handshake_duration_seconds"].GetMetric()[0].GetHistogram()
	finite := 0
	for i, b := range h.GetBucket() {
		if math.IsInf(b.GetUpperBound(), 1) {
			continue
		}
		finite++
		if want := 1e-6 * math.Pow(4, float64(i)); math.Abs(b.GetUpperBound()-want) > want*1e-9 {
			t.Errorf("bucket %d: le %v, want %v", i, b.GetUpperBound(), want)
		}
	}

	if finite < 10 {
		t.Errorf("%d classic buckets", finite)
	}
	// OpenMetrics: exemplars naming a connection id.
	code, om := a.get(t, "/metrics", "", "", "Accept", "application/openmetrics-text; version=1.0.0; charset=utf-8")
	if code != http.StatusOK || !regexp.MustCompile(`tcpfsm_\w+_duration_seconds_bucket\{[^}]*\} \d+ # \{conn_id="\d+"\}`).Match(om) {
		t.Errorf("OpenMetrics scrape (%d) has no {conn_id} exemplar", code)
	}
	// Protobuf: native buckets next to the classic ones.
	code, pb := a.get(t, "/metrics", "", "", "Accept", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited")
	if code != http.StatusOK {
		t.Fatalf("protobuf scrape: %d", code)
	}
	r := bufio.NewReader(bytes.NewReader(pb))
	native := false
	for {
		var mf dto.MetricFamily
		if err := protodelim.UnmarshalFrom(r, &mf); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("protobuf scrape: %v", err)
			}
			break
		}
		if mf.GetName() == "tcpfsm_handshake_duration_seconds" {
			for _, m := range mf.GetMetric() {
				h := m.GetHistogram()
				if h.GetSchema() != 0 || len(h.GetPositiveSpan()) > 0 {
					native = len(h.GetBucket()) > 0
				}
			}
		}
	}
	if !native {
		t.Error("protobuf scrape: tcpfsm_handshake_duration_seconds has no native buckets next to its classic ones")
	}
}

// ---- a real Prometheus ----

// promServer runs Debian's prometheus on a free loopback port with its own
// storage, scraping the agent every second and evaluating rules every second.
type promServer struct {
	addr   string
	cmd    *exec.Cmd
	stderr *lockedBuffer
}

func startPrometheus(t testing.TB, promBin, target, rulesFile string) *promServer {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: tcpfsm
    static_configs:
      - targets: [%q]
`, rulesFile, target)
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &promServer{addr: freeAddr(t), stderr: &lockedBuffer{}}
	p.cmd = exec.Command(promBin, "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+p.addr, "--log.level=warn")
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		p.cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + p.addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-exited:
			t.Fatalf("prometheus exited: %s", p.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready within 30s: %v\n%s", err, p.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s promSample) float() float64 {
	str, _ := s.Value[1].(string)
	f, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return math.NaN()
	}
	return f
}

// query runs an instant query; a query Prometheus rejects fails the test.
func (p *promServer) query(t testing.TB, q string) []promSample {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
	if r.Status != "success" {
		t.Fatalf("query %q: %s", q, r.Error)
	}
	var out []promSample
	switch r.Data.ResultType {
	case "vector":
		if err := json.Unmarshal(r.Data.Result, &out); err != nil {
			t.Fatal(err)
		}
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(r.Data.Result, &v); err != nil {
			t.Fatal(err)
		}
		out = []promSample{{Value: v}}
	default:
		t.Fatalf("query %q: result type %s", q, r.Data.ResultType)
	}
	return out
}

// value is a query's single value (NaN when it has none).
func (p *promServer) value(t testing.TB, q string) float64 {
	t.Helper()
	res := p.query(t, q)
	if len(res) != 1 {
		return math.NaN()
	}
	return res[0].float()
}

// Every PromQL expression of deploy/: the dashboard's targets (with its
// variables filled in), the recording rules, and what each alert compares,
// returns data from a real Prometheus scraping a real agent.
func TestAgentPrometheusEndToEnd(t *testing.T) {
	nettest.RequireBPF(t)
	promBin := needTool(t, "prometheus", "prometheus")
	rulesFile, err := filepath.Abs(deployFile(t, "prometheus/rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	d := loadDashboard(t)
	rules := loadRules(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	a := startAgent(t, bin, agentOptions{args: []string{"--netns", ns.Path(), "--log.file", filepath.Join(t.TempDir(), "log"),
		"--metrics.bpf-stats"}})
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	server(t, ln, 2000)
	addr := ln.Addr().String()
	// A first round before Prometheus starts: every labelled series
	// exists from its first scrape on, so the second round shows in rates.
	n1 := mixed(t, ns, addr)
	a.waitMetric(t, "the first round", func(m map[string]*dto.MetricFamily) bool {
		return metricSum(m, "tcpfsm_connections_closed_total", "role", "active") >= float64(n1.graceful+n1.refused+n1.reset)
	})

	p := startPrometheus(t, promBin, a.addr, rulesFile)
	deadline := time.Now().Add(20 * time.Second)
	for p.value(t, `count_over_time(up{job="tcpfsm"}[1m])`) < 3 || p.value(t, `up{job="tcpfsm"}`) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("prometheus did not scrape the agent 3 times within 20s:\n%s", p.stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	n2 := mixed(t, ns, addr)
	total := float64(n1.graceful + n1.refused + n1.reset + n2.graceful + n2.refused + n2.reset)

	// The queries.
	type namedQuery struct{ from, q string }
	var queries []namedQuery
	instance := a.addr
	for title, exprs := range dashboardExprs(&d) {
		for _, e := range exprs {
			queries = append(queries, namedQuery{"dashboard panel " + title, grafanaVars(e, instance, "1m")})
		}
	}
	for _, r := range rules {
		switch {
		case r.Record != "":
			queries = append(queries, namedQuery{"recording rule " + r.Record + " (expr)", r.Expr},
				namedQuery{"recording rule " + r.Record, r.Record})
		case r.Alert != "":
			lhs, ok := alertLHS(r.Expr)
			if !ok {
				t.Fatalf("alert %s: %q is not <recording rule> <op> <number>", r.Alert, r.Expr)
			}
			queries = append(queries, namedQuery{"alert " + r.Alert + " (left-hand side)", lhs})
		}
	}
	slices.SortFunc(queries, func(x, y namedQuery) int { return strings.Compare(x.from+x.q, y.from+y.q) })

	// Wait until Prometheus has the second round (scraped, rules
	// evaluated), then until every query has data.
	deadline = time.Now().Add(30 * time.Second)
	var empty []namedQuery
	for {
		empty = empty[:0]
		if v := p.value(t, `sum(tcpfsm_connections_closed_total{role="active"})`); !(v >= total) {
			empty = append(empty, namedQuery{"the second round", fmt.Sprintf("%v active closes, want %v", v, total)})
		}
		if v := p.value(t, `sum(instance_kind:tcpfsm_connections_closed:rate5m)`); !(v > 0) {
			empty = append(empty, namedQuery{"the second round", fmt.Sprintf("close rate %v, want > 0", v)})
		}
		for _, q := range queries {
			if len(p.query(t, q.q)) == 0 {
				empty = append(empty, q)
			}
		}
		if len(empty) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, q := range empty {
				t.Errorf("no data: %s: %s", q.from, q.q)
			}
			t.Fatalf("agent's /metrics:\n%s", func() string { _, b := a.scrape(t); return grepTcpfsm(b) }())
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("%d queries, each with data", len(queries))

	// Every rule evaluates without error.
	resp, err := http.Get("http://" + p.addr + "/api/v1/rules")
	if err != nil {
		t.Fatal(err)
	}
	var rr struct {
		Data struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	json.NewDecoder(resp.Body).Decode(&rr)
	resp.Body.Close()
	nrules := 0
	for _, g := range rr.Data.Groups {
		for _, r := range g.Rules {
			nrules++
			if r.Health != "ok" {
				t.Errorf("rule %s: health %q %s", r.Name, r.Health, r.LastError)
			}
		}
	}
	if nrules != len(rules) {
		t.Errorf("prometheus loaded %d rules, the file has %d", nrules, len(rules))
	}

	// The values mean what they say.
	checks := []struct {
		q      string
		lo, hi float64
	}{
		{`instance:tcpfsm_up:max`, 1, 1},
		{`instance:tcpfsm_connections_time_wait:sum`, 1, 1000},
		{`instance:tcpfsm_ephemeral_ports:max`, 1, 65535},
		{`instance:tcpfsm_time_wait_ephemeral_ports:ratio`, 1e-6, 0.5},
		{`instance:tcpfsm_connect_failures:ratio_rate5m`, 0.01, 0.5},
		{`instance:tcpfsm_connections_close_wait:sum`, 0, 0},
		{`instance:tcpfsm_connections_close_wait_stuck:sum`, 0, 0},
		{`count(instance_state:tcpfsm_connections_stuck:sum)`, 5, 5},
		{`instance:tcpfsm_events_lost:rate5m`, 0, 0},
		{`max(instance_role:tcpfsm_handshake_duration_seconds:p50_rate5m)`, 1e-7, 0.1},
		{`sum(tcpfsm_connections_closed_total{kind="refused"})`, float64(n1.refused + n2.refused), float64(n1.refused + n2.refused)},
		{`sum(instance_direction:tcpfsm_resets:rate5m{direction="sent"})`, 1e-6, 100},
	}
	for _, c := range checks {
		if v := p.value(t, c.q); !(v >= c.lo && v <= c.hi) {
			t.Errorf("%s = %v, want %v to %v", c.q, v, c.lo, c.hi)
		}
	}
	// The ephemeral port gauge is this machine's range.
	if ports, err := readEphemeral(); err == nil {
		if v := p.value(t, `instance:tcpfsm_ephemeral_ports:max`); v != float64(ports) {
			t.Errorf("instance:tcpfsm_ephemeral_ports:max = %v, the host has %d", v, ports)
		}
	}
}

// readEphemeral is the port range's size without reserved ports, read
// here directly.
func readEphemeral() (int, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	lo, _ := strconv.Atoi(f[0])
	hi, _ := strconv.Atoi(f[1])
	if r, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_reserved_ports"); err == nil && strings.TrimSpace(string(r)) != "" {
		return 0, errors.New("reserved ports set")
	}
	return hi - lo + 1, nil
}

// ---- web configuration ----

// selfSigned writes a certificate and key for 127.0.0.1 and returns a
// client that trusts it.
func selfSigned(t testing.TB, dir string) (certFile, keyFile string, client *http.Client) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tcpfsm test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// --web.config.file: a bcrypt basic-auth user guards every path; with TLS
// too, plain HTTP gets nowhere.
func TestAgentWebConfig(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret pass"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	for _, withTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "basic auth", true: "TLS and basic auth"}[withTLS], func(t *testing.T) {
			dir := t.TempDir()
			cfg := fmt.Sprintf("basic_auth_users:\n  prometheus: %s\n", hash)
			o := agentOptions{}
			if withTLS {
				cert, key, client := selfSigned(t, dir)
				cfg += fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\n", cert, key)
				o.client, o.scheme = client, "https"
			}
			webCfg := filepath.Join(dir, "web.yml")
			if err := os.WriteFile(webCfg, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			ns := nettest.NewNS(t)
			o.args = []string{"--web.config.file", webCfg, "--netns", ns.Path(), "--log.file", filepath.Join(dir, "log")}
			a := startAgent(t, bin, o)
			for _, c := range []struct {
				path, user, pass string
				want             int
			}{
				{"/metrics", "", "", http.StatusUnauthorized},
				{"/metrics", "prometheus", "wrong", http.StatusUnauthorized},
				{"/metrics", "someone", "s3cret pass", http.StatusUnauthorized},
				{"/metrics", "prometheus", "s3cret pass", http.StatusOK},
				{"/healthz", "", "", http.StatusUnauthorized},
				{"/readyz", "prometheus", "s3cret pass", http.StatusOK},
			} {
				code, body := a.get(t, c.path, c.user, c.pass)
				if code != c.want {
					t.Errorf("GET %s as %q/%q: %d, want %d", c.path, c.user, c.pass, code, c.want)
				}
				if code == http.StatusOK && c.path == "/metrics" && !bytes.Contains(body, []byte("tcpfsm_build_info")) {
					t.Errorf("GET /metrics: no tcpfsm_build_info")
				}
			}
			if withTLS {
				plain := &agentRun{addr: a.addr, scheme: "http", client: &http.Client{Timeout: 5 * time.Second}}
				if code, _ := plain.get(t, "/metrics", "prometheus", "s3cret pass"); code == http.StatusOK {
					t.Error("plain HTTP served /metrics with TLS configured")
				}
			}
			if code := a.stop(t); code != 0 {
				t.Errorf("exit %d", code)
			}
		})
	}
}

// ---- SIGTERM during traffic ----

// A burst of connections, each closed by both ends, then SIGTERM at once:
// the agent exits 0 and every connection that finished before the signal
// has both its records in the log (the client's still in TIME_WAIT).
func TestAgentSIGTERMFlushesEveryRecord(t *testing.T) {
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	a := startAgent(t, bin, agentOptions{args: append([]string{"--netns", ns.Path()}, small...)}) // records on stdout
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	done := server(t, ln, 64)
	srvPort := ln.Addr().(*net.TCPAddr).Port
	const n = 200
	ports := make([]int, 0, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		ports = append(ports, graceful(t, ns, ln.Addr().String(), 32))
	}
	for i := 0; i < n; i++ {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("server handled %d of %d connections", i, n)
		}
	}
	burst := time.Since(start)
	if code := a.stop(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM\nstderr:\n%s", code, a.stderr)
	}
	t.Logf("%d connections in %v, then SIGTERM", n, burst.Round(time.Millisecond))
	recs := records(t, []byte(a.stdout.String()))
	seen := map[[2]int]int{}
	for _, r := range recs {
		seen[[2]int{r.Lport, r.Rport}]++
	}
	missing := 0
	for _, p := range ports {
		for _, k := range [][2]int{{p, srvPort}, {srvPort, p}} {
			if seen[k] != 1 {
				missing++
				if missing <= 10 {
					t.Errorf("connection %d<->%d: %d records of the end with local port %d, want 1", p, srvPort, seen[k], k[0])
				}
			}
		}
	}
	if missing > 0 || len(recs) != 2*n {
		t.Fatalf("%d records for %d connections (both ends), %d missing\nstderr:\n%s", len(recs), n, missing, a.stderr)
	}
	if !strings.Contains(a.stderr.String(), `"msg":"stopped","records_logged":400`) {
		t.Errorf("stop summary:\n%s", a.stderr)
	}
}

// ---- the systemd unit's system call filter ----

// syscallGroups reads systemd's system call groups.
func syscallGroups(t testing.TB, sa string) map[string][]string {
	t.Helper()
	out, err := exec.Command(sa, "syscall-filter").Output()
	if err != nil {
		t.Fatal(err)
	}
	groups := map[string][]string{}
	cur := ""
	for _, l := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(l, "@"):
			cur = strings.TrimSpace(l)
		case strings.TrimSpace(l) == "" || strings.HasPrefix(strings.TrimSpace(l), "#"):
		case cur != "":
			groups[cur] = append(groups[cur], strings.TrimSpace(l))
		}
	}
	return groups
}

// unitSyscalls applies the unit's SystemCallFilter= lines in order, as
// systemd does when the first is an allow list: later allow lists add,
// ~lists remove.
func unitSyscalls(t testing.TB, groups map[string][]string, lines []string) map[string]bool {
	t.Helper()
	var expand func(string, map[string]bool)
	expand = func(item string, into map[string]bool) {
		if strings.HasPrefix(item, "@") {
			if _, ok := groups[item]; !ok {
				t.Fatalf("unknown system call group %s", item)
			}
			for _, x := range groups[item] {
				expand(x, into)
			}
			return
		}
		into[item] = true
	}
	allowed := map[string]bool{}
	for i, l := range lines {
		deny := strings.HasPrefix(l, "~")
		if i == 0 && deny {
			t.Fatal("the first SystemCallFilter= is a deny list; this test expects an allow list")
		}
		set := map[string]bool{}
		for _, item := range strings.Fields(strings.TrimPrefix(l, "~")) {
			expand(item, set)
		}
		for s := range set {
			if deny {
				delete(allowed, s)
			} else {
				allowed[s] = true
			}
		}
	}
	return allowed
}

// Every system call the agent makes (traced with strace through start,
// traffic, scrapes and SIGTERM, on either hook) is one the unit's
// SystemCallFilter= allows: the filter does not break bpf().
func TestSystemdSyscallFilter(t *testing.T) {
	nettest.RequireBPF(t)
	strace := needTool(t, "strace", "strace")
	sa := needTool(t, "systemd-analyze", "systemd")
	d := unitDirectives(t, readDeploy(t, "systemd/tcpfsm-agent.service"))
	allowed := unitSyscalls(t, syscallGroups(t, sa), d["SystemCallFilter"])
	for _, must := range []string{"bpf", "perf_event_open", "read", "epoll_pwait"} {
		if !allowed[must] {
			t.Fatalf("the unit's filter does not allow %s", must)
		}
	}
	bin := buildBinary(t)
	for _, attach := range []string{"raw_tracepoint", "tracepoint"} {
		t.Run(attach, func(t *testing.T) {
			ns := nettest.NewNS(t)
			dir := t.TempDir()
			trace := filepath.Join(dir, "strace")
			a := startAgent(t, bin, agentOptions{prefix: []string{strace, "-f", "-qq", "-o", trace},
				args: []string{"--attach", attach, "--netns", ns.Path(), "--log.file", filepath.Join(dir, "log")}})
			ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
			done := server(t, ln, 10)
			graceful(t, ns, ln.Addr().String(), 10)
			<-done
			reset(t, ns, ln.Addr().String())
			<-done
			a.waitMetric(t, "the closes", func(m map[string]*dto.MetricFamily) bool {
				return metricSum(m, "tcpfsm_connections_closed_total") >= 4
			})
			a.get(t, "/readyz", "", "")
			// strace forwards no signal: SIGTERM goes to the agent, its
			// child; strace exits with the agent's status.
			kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", a.cmd.Process.Pid, a.cmd.Process.Pid))
			if err != nil || len(strings.Fields(string(kids))) != 1 {
				t.Fatalf("the agent under strace: %q %v", kids, err)
			}
			pid, _ := strconv.Atoi(strings.Fields(string(kids))[0])
			if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := a.wait(t); code != 0 {
				t.Fatalf("exit %d\n%s", code, a.stderr)
			}
			out, err := os.ReadFile(trace)
			if err != nil {
				t.Fatal(err)
			}
			used := map[string]int{}
			re := regexp.MustCompile(`^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]`)
			for _, l := range strings.Split(string(out), "\n") {
				if m := re.FindStringSubmatch(l); m != nil {
					used[m[1]]++
				}
			}
			if used["bpf"] == 0 || (attach == "tracepoint" && used["perf_event_open"] == 0) {
				t.Fatalf("strace saw no bpf()/perf_event_open(): %v", used)
			}
			var denied []string
			for s := range used {
				if !allowed[s] {
					denied = append(denied, s)
				}
			}
			slices.Sort(denied)
			if len(denied) > 0 {
				t.Errorf("the unit's SystemCallFilter= would refuse %v", denied)
			}
			t.Logf("%d distinct system calls, all allowed", len(used))
		})
	}
}
