package main

// End-to-end tests of the tcpfsm binary on the running kernel, each in a
// fresh network namespace with traffic made by helper processes.

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
)

// buildBinary compiles tcpfsm once per test run.
// TCPFSM_BINARY names a prebuilt one instead: the 6.1 kernel VM has no
// Go toolchain.
func buildBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("TCPFSM_BINARY"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "tcpfsm")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startTracer starts the binary and waits until it has attached.
func startTracer(t *testing.T, bin string, args ...string) (*exec.Cmd, io.Reader, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderrPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			// A tracer the test did not wait for: its exit is the kill's.
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	stderr := &strings.Builder{}
	attached := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderrPipe)
		first := true
		for sc.Scan() {
			stderr.WriteString(sc.Text() + "\n")
			if first {
				attached <- sc.Text()
				first = false
			}
		}
		close(attached)
	}()
	// Loading and verifying the programs takes 5 to 20 s under the qemu
	// VMs' software emulation (waitServing allows the agent as much).
	limit := 20 * time.Second
	if inKernelVM() {
		limit = 90 * time.Second
	}
	select {
	case line := <-attached:
		if !strings.HasPrefix(line, "Tracing TCP") && !strings.HasPrefix(line, "Recording TCP") {
			t.Fatalf("tracer did not start: %q", line)
		}
	case <-time.After(limit):
		t.Fatalf("tracer did not attach within %v", limit)
	}
	return cmd, stdout, stderr
}

func waitExit(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("tracer: %v", err)
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill() // the test fails either way
		t.Fatal("tracer did not exit within 20s")
	}
}

type jsonEvent struct {
	ConnID  uint64 `json:"conn_id"`
	Old     string `json:"old"`
	New     string `json:"new"`
	Laddr   string `json:"laddr"`
	Lport   int    `json:"lport"`
	Raddr   string `json:"raddr"`
	Rport   int    `json:"rport"`
	Pid     int    `json:"pid"`
	Comm    string `json:"comm"`
	Owner   string `json:"owner"`
	TxBytes uint64 `json:"tx_bytes"`
	RxBytes uint64 `json:"rx_bytes"`
	Netns   uint32 `json:"netns"`
	Family  string `json:"family"`
}

// The done-when: tcpfsm trace -o json while a loopback client
// talks to a loopback server shows both ends' full sequences with the
// right ports, owners and byte counts.
func TestTraceJSONLive(t *testing.T) {
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	cmd, stdout, _ := startTracer(t, bin, "trace", "-o", "json", "--netns", ns.Path(), "-n", "12")
	lines := make(chan []string, 1)
	go func() {
		var ls []string
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			ls = append(ls, sc.Text())
		}
		lines <- ls
	}()

	const cliSends, srvSends = 3000, 70000
	srv := ns.StartHelper(t, nettest.Helper{Comm: "json-srv", Role: "server", Network: "tcp4", Addr: "127.0.0.1:0", Send: srvSends})
	srvPort := srv.Port(t)
	cli := ns.StartHelper(t, nettest.Helper{Comm: "json-cli", Role: "client", Network: "tcp4", Addr: "127.0.0.1:" + strconv.Itoa(srvPort), Send: cliSends})
	cli.Done(t)
	srv.Done(t)
	waitExit(t, cmd)

	var events []jsonEvent
	for _, l := range <-lines {
		var e jsonEvent
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("bad JSON line %q: %v", l, err)
		}
		if e.Netns != ns.Inode || e.Family != "ipv4" {
			t.Errorf("event in netns %d family %s, want %d ipv4", e.Netns, e.Family, ns.Inode)
		}
		events = append(events, e)
	}
	if len(events) != 12 {
		t.Fatalf("got %d events, want 12 (-n 12)", len(events))
	}
	byConn := map[uint64][]jsonEvent{}
	var order []uint64
	for _, e := range events {
		if _, ok := byConn[e.ConnID]; !ok {
			order = append(order, e.ConnID)
		}
		byConn[e.ConnID] = append(byConn[e.ConnID], e)
	}
	if len(order) != 3 {
		t.Fatalf("got %d connections, want listener, client, server", len(order))
	}
	seq := func(es []jsonEvent) []string {
		var s []string
		for _, e := range es {
			s = append(s, e.Old+"->"+e.New)
		}
		return s
	}
	var sawClient, sawServer, sawListener bool
	for _, id := range order {
		es := byConn[id]
		first := es[0]
		switch {
		case first.Rport == 0:
			sawListener = true
			if got := seq(es); !slices.Equal(got, []string{"CLOSE->LISTEN", "LISTEN->CLOSE"}) {
				t.Errorf("listener: %v", got)
			}
			checkOwner(t, "listener", es, srv.Pid, "json-srv")
		case first.Rport == srvPort:
			sawClient = true
			if got := seq(es); !slices.Equal(got, []string{"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE"}) {
				t.Errorf("client: %v", got)
			}
			checkOwner(t, "client", es, cli.Pid, "json-cli")
			for _, e := range es {
				if e.Lport == 0 || e.Lport != first.Lport || e.Laddr != "127.0.0.1" || e.Raddr != "127.0.0.1" {
					t.Errorf("client event %s->%s: %s:%d -> %s:%d", e.Old, e.New, e.Laddr, e.Lport, e.Raddr, e.Rport)
				}
			}
			if last := es[len(es)-1]; last.TxBytes != cliSends || last.RxBytes != srvSends {
				t.Errorf("client at close: tx %d rx %d, want %d %d", last.TxBytes, last.RxBytes, cliSends, srvSends)
			}
		case first.Lport == srvPort:
			sawServer = true
			if got := seq(es); !slices.Equal(got, []string{"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE"}) {
				t.Errorf("server: %v", got)
			}
			checkOwner(t, "server", es, srv.Pid, "json-srv")
			if last := es[len(es)-1]; last.TxBytes != srvSends || last.RxBytes != cliSends {
				t.Errorf("server at close: tx %d rx %d, want %d %d", last.TxBytes, last.RxBytes, srvSends, cliSends)
			}
		}
	}
	if !sawClient || !sawServer || !sawListener {
		t.Errorf("missing an end: client %v server %v listener %v", sawClient, sawServer, sawListener)
	}
}

func checkOwner(t *testing.T, who string, es []jsonEvent, pid int, comm string) {
	t.Helper()
	for _, e := range es {
		if e.Pid != pid || e.Comm != comm || e.Owner == "unknown" {
			t.Errorf("%s event %s->%s: pid %d comm %q (%s), want %d %q", who, e.Old, e.New, e.Pid, e.Comm, e.Owner, pid, comm)
		}
	}
}

// Ctrl-C: a clean exit 0, the rows seen, and the count of seen and lost.
func TestTraceInterrupt(t *testing.T) {
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	cmd, stdout, stderr := startTracer(t, bin, "trace", "--netns", ns.Path(), "-L", "7000")
	out := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(stdout)
		out <- string(b)
	}()
	ln := ns.Listen(t, "tcp4", "127.0.0.1:7000")
	ln.Close()
	// Events reach the tracer within its flush interval.
	time.Sleep(300 * time.Millisecond)
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	waitExit(t, cmd)
	rows := strings.Split(strings.TrimSpace(<-out), "\n")
	if len(rows) != 3 || !strings.HasPrefix(rows[0], "TIME") ||
		!strings.Contains(rows[1], "CLOSE       -> LISTEN") || !strings.Contains(rows[2], "LISTEN      -> CLOSE") {
		t.Errorf("rows:\n%s", strings.Join(rows, "\n"))
	}
	if !strings.Contains(stderr.String(), "2 transitions seen, 2 shown, 0 lost") {
		t.Errorf("summary: %q", stderr.String())
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signaled() {
		t.Errorf("tracer died of its signal instead of exiting: %v", cmd.ProcessState)
	}
}
