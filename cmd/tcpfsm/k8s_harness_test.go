package main

// What the Kubernetes tests run: the peer image and its containers in
// containerd's pods, tcpfsm life / record / trace beside them, and their
// JSON lines read back.

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/containerd"
)

const peerImage = "localhost/tcpfsm/peer:1"

// buildPeer builds the helper, static, for the image.
func buildPeer(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "tcppeer")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/tcpfsm/tcpfsm/internal/testkit/tcppeer")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build tcppeer: %v\n%s", err, b)
	}
	return out
}

func freePort(t *testing.T) int {
	t.Helper()
	_, p, _ := net.SplitHostPort(freeAddr(t))
	n, _ := strconv.Atoi(p)
	return n
}

// listening reports whether something listens on 127.0.0.1:port, from
// /proc/net/tcp (asking by connecting would make a connection).
func listening(port int) bool {
	b, _ := os.ReadFile("/proc/net/tcp")
	want := fmt.Sprintf("0100007F:%04X", port)
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 3 && f[1] == want && f[3] == "0A" {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// peerContainer is a container running tcppeer, driven through its jobs
// directory, reached from the host as /proc/PID/root/jobs.
type peerContainer struct {
	name, id string
	jobs     string
	n        int
}

func runPeer(t *testing.T, ctrd *containerd.Containerd, sb *containerd.Sandbox, name string, serve int) *peerContainer {
	t.Helper()
	cmd := []string{"/tcppeer", "-jobs", "/jobs"}
	if serve != 0 {
		cmd = append(cmd, "-serve", fmt.Sprintf("127.0.0.1:%d", serve))
	}
	id := ctrd.RunContainer(t, sb, containerd.Container{Name: name, Image: peerImage, Command: cmd})
	p := &peerContainer{name: name, id: id, jobs: fmt.Sprintf("/proc/%d/root/jobs", ctrd.PID(t, id))}
	if serve != 0 {
		waitFor(t, fmt.Sprintf("%s listening on %d", name, serve), 20*time.Second, func() bool { return listening(serve) })
	}
	return p
}

// dial makes the container connect count times to port and waits for it
// to be done; wantOK false expects the connects to fail.
func (p *peerContainer) dial(t *testing.T, port, count, size int, wantOK bool) {
	t.Helper()
	p.dialAddr(t, fmt.Sprintf("127.0.0.1:%d", port), count, size, wantOK)
}

func (p *peerContainer) dialAddr(t *testing.T, addr string, count, size int, wantOK bool) {
	t.Helper()
	p.n++
	job := filepath.Join(p.jobs, fmt.Sprintf("%d.job", p.n))
	if err := os.WriteFile(job+".tmp", []byte(fmt.Sprintf("dial %s %d %d\n", addr, count, size)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(job+".tmp", job); err != nil {
		t.Fatal(err)
	}
	done := strings.TrimSuffix(job, ".job") + ".done"
	var res []byte
	waitFor(t, p.name+"'s job "+job, 20*time.Second, func() bool {
		var err error
		res, err = os.ReadFile(done)
		return err == nil
	})
	if ok := strings.HasPrefix(string(res), "ok"); ok != wantOK {
		t.Fatalf("%s: dial %s ×%d: %s", p.name, addr, count, res)
	}
}

// lifeRun is a `tcpfsm life` process.
type lifeRun struct {
	name   string
	cmd    *exec.Cmd
	stdout *lockedBuffer
	stderr *lockedBuffer
	done   chan struct{}
}

func startLife(t *testing.T, bin, name string, args ...string) *lifeRun {
	t.Helper()
	return startPrinter(t, bin, "life", name, args...)
}

// startPrinter starts tcpfsm life or trace and waits until it names
// containers.
func startPrinter(t *testing.T, bin, command, name string, args ...string) *lifeRun {
	t.Helper()
	l := &lifeRun{name: name, stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan struct{})}
	l.cmd = exec.Command(bin, append([]string{command}, args...)...)
	l.cmd.Stdout = l.stdout
	errPipe, err := l.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-l.done:
		default:
			// A run the test did not stop: killed, its exit is the kill's.
			_ = l.cmd.Process.Kill()
			<-l.done
		}
	})
	started := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(errPipe)
		once := sync.Once{}
		for sc.Scan() {
			_, _ = l.stderr.Write([]byte(sc.Text() + "\n")) // a buffer: no error
			if strings.HasPrefix(sc.Text(), "Naming containers") {
				once.Do(func() { close(started) })
			}
		}
		_ = l.cmd.Wait() // stop reads the exit from ProcessState
		close(l.done)
	}()
	select {
	case <-started:
	case <-l.done:
		t.Fatalf("life %s exited: %s", name, l.stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("life %s did not start: %s", name, l.stderr)
	}
	return l
}

func (l *lifeRun) stop(t *testing.T) []map[string]any {
	t.Helper()
	if err := l.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("life %s: %v: %s", l.name, err, l.stderr)
	}
	select {
	case <-l.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("life %s did not stop", l.name)
	}
	if c := l.cmd.ProcessState.ExitCode(); c != 0 {
		t.Fatalf("life %s: exit %d: %s", l.name, c, l.stderr)
	}
	return jsonLines(t, l.stdout.String())
}

// logLines parses the agent's log: connection records only.
func logLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, r := range jsonLines(t, string(b)) {
		if r["msg"] == "connection" {
			out = append(out, r)
		}
	}
	return out
}

func str(v any, path ...string) string {
	for _, p := range path {
		m, _ := v.(map[string]any)
		v = m[p]
	}
	s, _ := v.(string)
	return s
}

func num(r map[string]any, k string) int {
	f, _ := r[k].(float64)
	return int(f)
}

// who is a container's expected names in a record.
type who struct {
	ns, pod, container, kind, workload, app string
}

func (w who) check(t *testing.T, what string, k map[string]any, withContainer bool) {
	t.Helper()
	if k == nil {
		t.Errorf("%s: no %s object", what, map[bool]string{true: "k8s", false: "peer_k8s"}[withContainer])
		return
	}
	got := who{ns: str(k, "namespace"), pod: str(k, "pod"), container: str(k, "container"),
		kind: str(k, "workload", "kind"), workload: str(k, "workload", "name"), app: str(k, "labels", "app")}
	if str(k, "uid") == "" {
		t.Errorf("%s: no pod uid: %v", what, k)
	}
	if got != w {
		t.Errorf("%s: names %+v, want %+v", what, got, w)
	}
}
