package main

// Faults of the agent process: killed, stopped in the middle of traffic,
// run for a long time. Each in its own network namespace.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/nettest"
)

// agentProc is a running `tcpfsm agent`.
type agentProc struct {
	cmd     *exec.Cmd
	logPath string
	addr    string // its /metrics address
	stderr  *strings.Builder
}

// runAgentProc starts the agent traced to ns and waits until it is
// tracing and serving.
func runAgentProc(t *testing.T, bin string, ns *nettest.NS, extra ...string) *agentProc {
	t.Helper()
	a := &agentProc{logPath: filepath.Join(t.TempDir(), "records.jsonl"), stderr: &strings.Builder{}}
	args := append([]string{"agent", "--netns", ns.Path(), "--web.listen-address", "127.0.0.1:0", "--log.file", a.logPath}, extra...)
	a.cmd = exec.Command(bin, args...)
	stderr, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if a.cmd.ProcessState == nil {
			a.cmd.Process.Kill()
			a.cmd.Wait()
		}
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			a.stderr.WriteString(line + "\n")
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "Listening on" {
				ready <- fmt.Sprint(m["address"])
			}
		}
	}()
	select {
	case a.addr = <-ready:
	case <-time.After(20 * time.Second):
		t.Fatalf("agent not serving within 20s: %s", a.stderr.String())
	}
	return a
}

func (a *agentProc) stop(t *testing.T, sig os.Signal) {
	t.Helper()
	a.cmd.Process.Signal(sig)
	done := make(chan error, 1)
	go func() { done <- a.cmd.Wait() }()
	select {
	case err := <-done:
		if sig != syscall.SIGKILL && err != nil {
			t.Fatalf("agent exit: %v; stderr:\n%s", err, a.stderr.String())
		}
	case <-time.After(20 * time.Second):
		a.cmd.Process.Kill()
		t.Fatal("agent did not exit within 20s")
	}
}

// logged is a connection record from the agent's log.
type logged struct {
	Lport    int    `json:"lport"`
	Rport    int    `json:"rport"`
	Role     string `json:"role"`
	Close    string `json:"close"`
	ClosedBy string `json:"closed_by"`
	Seeded   bool   `json:"seeded"`
	Anoms    []string
	Raw      map[string]any
}

func readLog(t *testing.T, path string) []logged {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []logged
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		var l logged
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		json.Unmarshal([]byte(line), &l.Raw)
		if a, ok := l.Raw["anomalies"].([]any); ok {
			for _, x := range a {
				l.Anoms = append(l.Anoms, fmt.Sprint(x))
			}
		}
		out = append(out, l)
	}
	return out
}

// tcpfsmPrograms are the agent's programs among the kernel's.
func tcpfsmPrograms(t *testing.T) (names []string, links int) {
	t.Helper()
	progs, ls, err := nettest.KernelObjects()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range progs {
		if strings.HasPrefix(name, "raw_inet_sock") || strings.HasPrefix(name, "raw_tcp_") || strings.HasPrefix(name, "tp_inet_sock") ||
			strings.HasPrefix(name, "fentry_") || strings.HasPrefix(name, "fexit_inet") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names, len(ls)
}

// kill -9, then a new agent: the kernel freed the programs and links of
// the killed one, and a connection open across the restart is picked up
// as partial, with its owner, and closed right.
func TestAgentKilledAndRestarted(t *testing.T) {
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	progsBefore, linksBefore := tcpfsmPrograms(t)

	a := runAgentProc(t, bin, ns)
	during, linksDuring := tcpfsmPrograms(t)
	if len(during) <= len(progsBefore) || linksDuring <= linksBefore {
		t.Fatalf("agent running: programs %v, links %d; before %v, %d", during, linksDuring, progsBefore, linksBefore)
	}
	// A connection across the restart.
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	c, err := ns.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	a.stop(t, syscall.SIGKILL)

	// The kernel releases a killed process's links and programs, maybe
	// not at once.
	deadline := time.Now().Add(10 * time.Second)
	for {
		after, linksAfter := tcpfsmPrograms(t)
		if slices.Equal(after, progsBefore) && linksAfter == linksBefore {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after kill -9: programs %v, links %d; before %v, %d", after, linksAfter, progsBefore, linksBefore)
		}
		time.Sleep(100 * time.Millisecond)
	}

	b := runAgentProc(t, bin, ns)
	c.Write([]byte("after the restart"))
	buf := make([]byte, 64)
	s.Read(buf)
	c.Close()
	io.Copy(io.Discard, s)
	s.Close()
	time.Sleep(300 * time.Millisecond)
	b.stop(t, syscall.SIGTERM)

	cport := c.LocalAddr().(*net.TCPAddr).Port
	sport := ln.Addr().(*net.TCPAddr).Port
	var got []string
	for _, l := range readLog(t, b.logPath) {
		if !(l.Lport == cport && l.Rport == sport) && !(l.Lport == sport && l.Rport == cport) {
			continue
		}
		got = append(got, l.Role+"/"+l.ClosedBy+"/"+l.Close)
		if !l.Seeded || !slices.Contains(l.Anoms, "partial") {
			t.Errorf("record %v: seeded %v anomalies %v; want seeded and partial", l.Raw, l.Seeded, l.Anoms)
		}
		owner, _ := l.Raw["owner"].(map[string]any)
		if owner == nil || int(owner["pid"].(float64)) != os.Getpid() {
			t.Errorf("record %s: owner %v, want the test process", l.Role, owner)
		}
	}
	slices.Sort(got)
	if want := []string{"active/local/graceful", "passive/remote/graceful"}; !slices.Equal(got, want) {
		t.Errorf("records of the connection open across the restart: %v, want %v", got, want)
	}
}

// SIGTERM in the middle of a burst: every connection that had closed
// before the signal is in the log, both ends.
func TestAgentSIGTERMMidBurst(t *testing.T) {
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	a := runAgentProc(t, bin, ns)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	sport := ln.Addr().(*net.TCPAddr).Port

	type done struct {
		port int
		at   time.Time
	}
	finished := make(chan done, 100000)
	stop := make(chan struct{})
	go func() {
		defer close(finished)
		ns.Churn(ln, 20000, stop, func(port int) { finished <- done{port, time.Now()} })
	}()
	time.Sleep(1500 * time.Millisecond)
	signalled := time.Now()
	a.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	var before []int
	for d := range finished {
		if d.at.Before(signalled) {
			before = append(before, d.port)
		}
	}
	a.stop(t, syscall.SIGTERM)
	if len(before) < 100 {
		t.Fatalf("only %d connections before the signal: too little traffic to test", len(before))
	}
	ends := map[string]bool{}
	for _, l := range readLog(t, a.logPath) {
		if l.Role == "active" && l.Rport == sport {
			ends["c"+strconv.Itoa(l.Lport)] = true
		}
		if l.Role == "passive" && l.Lport == sport {
			ends["s"+strconv.Itoa(l.Rport)] = true
		}
	}
	missing := 0
	for _, p := range before {
		if !ends["c"+strconv.Itoa(p)] || !ends["s"+strconv.Itoa(p)] {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d connections closed before SIGTERM have no record (or only one end) in the log", missing, len(before))
	}
	t.Logf("%d connections before the signal, all logged", len(before))
}
