package main

// The image really runs: loaded into podman (runc, cgroupfs) and into a
// private containerd, the agent runs with every capability dropped but
// CAP_BPF and CAP_PERFMON, on the host's network, and /metrics counts
// loopback connections made to a port it filters on, exactly.
//
// make test-image builds the archive and sets TCPFSM_IMAGE_*; as root.
// With CI=true a missing runtime is a failure, not a skip.

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
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// capMask is CAP_BPF (39) and CAP_PERFMON (38): the agent's whole
// capability set in every run below.
const capMask = "000000c000000000"

// connections made per run.
const conns = 20

type imageUnderTest struct {
	archive, name, version, revision string
}

func needImage(t *testing.T, tools ...string) imageUnderTest {
	t.Helper()
	img := imageUnderTest{
		archive:  os.Getenv("TCPFSM_IMAGE_ARCHIVE"),
		name:     os.Getenv("TCPFSM_IMAGE_NAME"),
		version:  os.Getenv("TCPFSM_IMAGE_VERSION"),
		revision: os.Getenv("TCPFSM_IMAGE_REVISION"),
	}
	if img.archive == "" {
		t.Skip("TCPFSM_IMAGE_ARCHIVE is not set: make test-image builds the image and runs this")
	}
	if img.name == "" || img.version == "" || img.revision == "" {
		t.Fatal("TCPFSM_IMAGE_NAME, TCPFSM_IMAGE_VERSION and TCPFSM_IMAGE_REVISION must be set with TCPFSM_IMAGE_ARCHIVE")
	}
	missing := func(what string) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: %s", what)
		}
		t.Skip(what)
	}
	if os.Geteuid() != 0 {
		missing("needs root: container runtimes and BPF")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing(tool + " is not installed (Debian: podman, runc, containerd, qemu-user)")
		}
	}
	return img
}

// versionLine is what `tcpfsm version` prints in the image on this host.
func (img imageUnderTest) versionLine() string { return img.versionLineFor(runtime.GOARCH) }

func (img imageUnderTest) versionLineFor(arch string) string {
	return fmt.Sprintf("tcpfsm %s (revision %s, %s, linux/%s)\n", img.version, img.revision, runtime.Version(), arch)
}

// The arm64 image's binary runs (under qemu-aarch64, user-mode emulation)
// and names its build: what an arm64 node would run.
func TestImageArm64Binary(t *testing.T) {
	img := needImage(t, "qemu-aarch64")
	b, err := os.ReadFile(img.archive)
	if err != nil {
		t.Fatal(err)
	}
	_, entries := readTar(t, b)
	blob := func(d v1.Hash) []byte {
		t.Helper()
		e, ok := entries["blobs/"+d.Algorithm+"/"+d.Hex]
		if !ok {
			t.Fatalf("no blob %s", d)
		}
		return e.data
	}
	var top, idx v1.IndexManifest
	decode(t, entries["index.json"].data, &top)
	decode(t, blob(top.Manifests[0].Digest), &idx)
	var bin []byte
	for _, d := range idx.Manifests {
		if d.Platform.Architecture != "arm64" {
			continue
		}
		var m v1.Manifest
		decode(t, blob(d.Digest), &m)
		_, files := readTar(t, gunzip(t, blob(m.Layers[0].Digest)))
		bin = files["usr/local/bin/tcpfsm"].data
	}
	if len(bin) == 0 {
		t.Fatal("no arm64 image with /usr/local/bin/tcpfsm")
	}
	path := filepath.Join(t.TempDir(), "tcpfsm")
	if err := os.WriteFile(path, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := runCmd(t, "qemu-aarch64", path, "version"); got != img.versionLineFor("arm64") {
		t.Errorf("arm64 tcpfsm version: %q, want %q", got, img.versionLineFor("arm64"))
	}
}

func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestImagePodman(t *testing.T) {
	img := needImage(t, "podman", "runc")
	dir := t.TempDir()
	// A storage of its own: nothing of the host's podman is touched. vfs
	// leaves no overlay mounts behind.
	pm := []string{"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run"),
		"--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"}
	podman := func(args ...string) string { t.Helper(); return runCmd(t, "podman", append(pm, args...)...) }
	t.Cleanup(func() { _ = exec.Command("podman", append(pm, "rm", "-af", "-t", "0")...).Run() }) // best effort: the store is removed next

	out := podman("load", "-i", img.archive)
	if !strings.Contains(out, "Loaded image: "+img.name) {
		t.Fatalf("podman load: %s", out)
	}
	var inspect []struct {
		Architecture, Os string
		Labels           map[string]string
		Config           struct{ Entrypoint, Cmd []string }
	}
	if err := json.Unmarshal([]byte(podman("image", "inspect", img.name)), &inspect); err != nil || len(inspect) != 1 {
		t.Fatalf("podman image inspect: %v", err)
	}
	in := inspect[0]
	if in.Architecture != runtime.GOARCH || in.Os != "linux" || in.Labels["org.opencontainers.image.version"] != img.version ||
		in.Labels["org.opencontainers.image.revision"] != img.revision ||
		strings.Join(in.Config.Entrypoint, " ") != "/usr/local/bin/tcpfsm" || strings.Join(in.Config.Cmd, " ") != "agent" {
		t.Errorf("podman image inspect: %+v", in)
	}

	// These machines cannot raise RLIMIT_NOFILE or RLIMIT_NPROC past
	// 20000; podman's defaults are higher.
	base := []string{"run", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=20000:20000"}
	if got := podman(append(base, "--rm", img.name, "version")...); got != img.versionLine() {
		t.Errorf("podman run IMAGE version: %q, want %q", got, img.versionLine())
	}

	// The default seccomp profile of Debian 12's podman (containers-common
	// 0.50) allows bpf() and perf_event_open() only with CAP_SYS_ADMIN: the
	// same profile with those two allowed for CAP_BPF and CAP_PERFMON, as
	// containerd's profile does, is what is needed then.
	var secopt []string
	if prof, changed := seccompForCaps(t, "/usr/share/containers/seccomp.json", dir); changed {
		t.Logf("podman's seccomp profile allows bpf() only with CAP_SYS_ADMIN: using it with bpf for CAP_BPF and perf_event_open for CAP_PERFMON (%s)", prof)
		secopt = []string{"--security-opt", "seccomp=" + prof}
	}

	for _, user := range []string{"0:0", "65532:65532"} {
		t.Run("uid "+strings.Split(user, ":")[0], func(t *testing.T) {
			name := fmt.Sprintf("tcpfsm-image-test-%d-%s", os.Getpid(), strings.Split(user, ":")[0])
			checkAgent(t, img, strings.Split(user, ":")[0], func(metricsAddr string, port int) agentRun {
				args := append(append([]string(nil), base...), "-d", "--name", name, "--user", user,
					"--network", "host", "--read-only", "--cap-drop", "all", "--cap-add", "CAP_BPF,CAP_PERFMON")
				args = append(args, secopt...)
				args = append(args, img.name, "agent", "--web.listen-address="+metricsAddr, "--lport="+strconv.Itoa(port))
				podman(args...)
				t.Cleanup(func() { _ = exec.Command("podman", append(pm, "rm", "-f", "-t", "0", name)...).Run() }) // best effort, as above
				return agentRun{
					pid: func() int {
						n, _ := strconv.Atoi(strings.TrimSpace(podman("inspect", "--format", "{{.State.Pid}}", name)))
						return n
					},
					logs: func() string { return podman("logs", name) },
					stop: func() int {
						podman("stop", "-t", "20", name)
						n, _ := strconv.Atoi(strings.TrimSpace(podman("inspect", "--format", "{{.State.ExitCode}}", name)))
						return n
					},
				}
			})
		})
	}
}

// containerd's own default seccomp profile (what a Kubernetes pod gets
// with seccompProfile RuntimeDefault) allows bpf() with CAP_BPF: the
// DaemonSet's setting, checked here with ctr.
func TestImageContainerd(t *testing.T) {
	img := needImage(t, "containerd", "ctr", "runc")
	dir, err := os.MkdirTemp("", "ctrd-") // short: the socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "containerd.sock")
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc", filepath.Join(dir, "debug.sock"))
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	daemon := exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	daemon.Stdout, daemon.Stderr = logf, logf
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = daemon.Process.Signal(os.Interrupt) // exited already: done closes
		done := make(chan struct{})
		go func() { _ = daemon.Wait(); close(done) }() // stopped by us: its status says nothing
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = daemon.Process.Kill()
			<-done
		}
		logf.Close()
		unmountUnder(dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing containerd's directory: %v", err)
		}
	})
	ctr := func(args ...string) string {
		t.Helper()
		return runCmd(t, "ctr", append([]string{"-a", sock, "-n", "k8s.io"}, args...)...)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := exec.Command("ctr", "-a", sock, "version").Run(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("containerd did not answer in 30 s:\n%s", b)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// What a node's containerd gets from `ctr -n k8s.io images import`.
	out := ctr("images", "import", "--all-platforms", img.archive)
	if !strings.Contains(out, "unpacking "+img.name) {
		t.Fatalf("ctr images import: %s", out)
	}
	ls := ctr("images", "ls")
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(img.name) + `\s+application/vnd\.oci\.image\.index\.v1\+json\s+sha256:\S+\s+.*linux/amd64,linux/arm64`).MatchString(ls) {
		t.Errorf("ctr images ls:\n%s", ls)
	}
	if got := ctr("run", "--rm", img.name, fmt.Sprintf("tcpfsm-version-%d", os.Getpid()), "/usr/local/bin/tcpfsm", "version"); got != img.versionLine() {
		t.Errorf("ctr run IMAGE tcpfsm version: %q, want %q", got, img.versionLine())
	}

	// ctr starts from containerd's default capability set: drop each.
	drops := []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
		"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}
	id := fmt.Sprintf("tcpfsm-agent-%d", os.Getpid())
	checkAgent(t, img, "0", func(metricsAddr string, port int) agentRun {
		args := []string{"-a", sock, "-n", "k8s.io", "run", "--rm", "--net-host", "--seccomp"}
		for _, c := range drops {
			args = append(args, "--cap-drop", "CAP_"+c)
		}
		args = append(args, "--cap-add", "CAP_BPF", "--cap-add", "CAP_PERFMON", img.name, id,
			"/usr/local/bin/tcpfsm", "agent", "--web.listen-address="+metricsAddr, "--lport="+strconv.Itoa(port))
		var logs syncBuffer
		cmd := exec.Command("ctr", args...)
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan int, 1)
		go func() {
			_ = cmd.Wait() // the exit code is what is checked
			exited <- cmd.ProcessState.ExitCode()
		}()
		t.Cleanup(func() {
			// Best effort: the task may have exited; containerd's state is
			// removed with its directory.
			_ = exec.Command("ctr", "-a", sock, "-n", "k8s.io", "task", "kill", "-s", "SIGKILL", id).Run()
			_ = cmd.Process.Kill()
			_ = exec.Command("ctr", "-a", sock, "-n", "k8s.io", "container", "rm", id).Run()
		})
		return agentRun{
			pid: func() int {
				out, err := exec.Command("ctr", "-a", sock, "-n", "k8s.io", "task", "ls").Output()
				if err != nil {
					return 0
				}
				for _, l := range strings.Split(string(out), "\n") {
					if f := strings.Fields(l); len(f) >= 3 && f[0] == id && f[2] == "RUNNING" {
						n, _ := strconv.Atoi(f[1])
						return n
					}
				}
				return 0
			},
			logs: logs.String,
			stop: func() int {
				ctr("task", "kill", "-s", "SIGTERM", id)
				select {
				case code := <-exited:
					return code
				case <-time.After(30 * time.Second):
					t.Fatal("the agent did not exit 30 s after SIGTERM")
					return -1
				}
			},
		}
	})
}

// agentRun is one started agent container.
type agentRun struct {
	pid  func() int    // its process on the host, 0 while there is none
	logs func() string // its stdout and stderr so far
	stop func() int    // SIGTERM, wait, exit code
}

// checkAgent starts the agent (start gets the metrics address and the
// port to filter on) and checks what a user would: it runs as uid with
// exactly CAP_BPF and CAP_PERFMON, becomes ready, counts `conns` loopback
// connections to the port exactly, names its build, logs one record per
// connection and exits 0 on SIGTERM.
func checkAgent(t *testing.T, img imageUnderTest, uid string, start func(metricsAddr string, port int) agentRun) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	metricsAddr := freeAddr(t)
	a := start(metricsAddr, port)
	base := "http://" + metricsAddr

	deadline := time.Now().Add(60 * time.Second)
	for {
		if code, _ := get(base + "/readyz"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready in 60 s; output:\n%s", a.logs())
		}
		time.Sleep(250 * time.Millisecond)
	}

	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.pid()))
	if err != nil {
		t.Fatalf("the agent's process: %v", err)
	}
	for _, want := range []string{"Uid:\t" + uid + "\t" + uid + "\t", "CapPrm:\t" + capMask, "CapEff:\t" + capMask, "CapBnd:\t" + capMask} {
		if !strings.Contains(string(status), want) {
			t.Errorf("the agent's /proc/PID/status has no %q:\n%s", want, status)
		}
	}

	before := scrape(t, base)
	makeConnections(t, ln, conns)
	var after map[string]float64
	deadline = time.Now().Add(20 * time.Second)
	for {
		after = scrape(t, base)
		if sum(after, "tcpfsm_connections_opened_total", `role="passive"`)-sum(before, "tcpfsm_connections_opened_total", `role="passive"`) >= conns &&
			sum(after, "tcpfsm_connections_closed_total", `role="passive"`)-sum(before, "tcpfsm_connections_closed_total", `role="passive"`) >= conns {
			break
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	time.Sleep(time.Second) // anything more would show now
	after = scrape(t, base)
	for _, c := range []struct {
		metric, labels string
		want           float64
	}{
		{"tcpfsm_connections_opened_total", `role="passive"`, conns},
		{"tcpfsm_connections_closed_total", `role="passive"`, conns},
		// The clients' ends have the port as the remote one: filtered out.
		{"tcpfsm_connections_opened_total", `role="active"`, 0},
	} {
		if got := sum(after, c.metric, c.labels) - sum(before, c.metric, c.labels); got != c.want {
			t.Errorf("%s{%s} rose by %v, want %v", c.metric, c.labels, got, c.want)
		}
	}
	info := fmt.Sprintf(`tcpfsm_build_info{goversion=%q,revision=%q,version=%q}`, runtime.Version(), img.revision, img.version)
	if after[info] != 1 {
		t.Errorf("no %s 1; build info series: %v", info, seriesOf(after, "tcpfsm_build_info"))
	}

	if code := a.stop(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0; output:\n%s", code, a.logs())
	}
	records := 0
	for _, l := range strings.Split(a.logs(), "\n") {
		if strings.Contains(l, `"msg":"connection"`) {
			records++
		}
	}
	if records != conns {
		t.Errorf("%d connection records logged, want %d; output:\n%s", records, conns, a.logs())
	}
}

// makeConnections makes n connections to ln, one after the other: the
// client writes a byte and closes first, the server reads to the end and
// closes, so the accepted end's record ends in CLOSE at once.
func makeConnections(t *testing.T, ln net.Listener, n int) {
	t.Helper()
	served := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			c, err := ln.Accept()
			if err != nil {
				served <- err
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = io.Copy(io.Discard, c)
			c.Close()
			if err != nil {
				served <- err
				return
			}
		}
		served <- nil
	}()
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the server did not see every connection in 30 s")
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(url string) (int, []byte) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// scrape reads /metrics as Prometheus text: series (name{labels}) to value.
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	code, body := get(base + "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", l, err)
		}
		m[l[:i]] = v
	}
	return m
}

// sum adds the series of metric whose labels contain sel (`role="passive"`).
func sum(m map[string]float64, metric, sel string) float64 {
	var s float64
	for k, v := range m {
		if (strings.HasPrefix(k, metric+"{") && strings.Contains(k, sel)) || (k == metric && sel == "") {
			s += v
		}
	}
	return s
}

func seriesOf(m map[string]float64, metric string) []string {
	var out []string
	for k := range m {
		if strings.HasPrefix(k, metric) {
			out = append(out, k)
		}
	}
	return out
}

// seccompForCaps returns a copy of the profile at path in which bpf and
// perf_event_open are allowed with CAP_BPF and CAP_PERFMON, and whether
// the original lacked that (false: use the runtime's default as it is).
func seccompForCaps(t *testing.T, path, dir string) (string, bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("podman's seccomp profile: %v", err)
	}
	var prof map[string]any
	if err := json.Unmarshal(b, &prof); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	rules, _ := prof["syscalls"].([]any)
	allowedFor := func(name, capName string) bool {
		for _, r := range rules {
			r, _ := r.(map[string]any)
			inc, _ := r["includes"].(map[string]any)
			caps, _ := inc["caps"].([]any)
			if r["action"] == "SCMP_ACT_ALLOW" && contains(r["names"], name) && contains(caps, capName) {
				return true
			}
		}
		return false
	}
	if allowedFor("bpf", "CAP_BPF") && allowedFor("perf_event_open", "CAP_PERFMON") {
		return "", false
	}
	for _, r := range rules {
		r, _ := r.(map[string]any)
		if r["action"] != "SCMP_ACT_ERRNO" {
			continue
		}
		names, _ := r["names"].([]any)
		var kept []any
		for _, n := range names {
			if n != "bpf" && n != "perf_event_open" {
				kept = append(kept, n)
			}
		}
		r["names"] = kept
	}
	rules = append(rules,
		map[string]any{"names": []string{"bpf"}, "action": "SCMP_ACT_ALLOW", "includes": map[string]any{"caps": []string{"CAP_BPF"}}},
		map[string]any{"names": []string{"perf_event_open"}, "action": "SCMP_ACT_ALLOW", "includes": map[string]any{"caps": []string{"CAP_PERFMON"}}})
	prof["syscalls"] = rules
	out, err := json.Marshal(prof)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "seccomp.json")
	if err := os.WriteFile(p, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, true
}

func contains(list any, s string) bool {
	l, _ := list.([]any)
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// unmountUnder unmounts whatever containerd left mounted below dir.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var points []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			points = append(points, f[1])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = exec.Command("umount", "-l", points[i]).Run() // what stays mounted fails the directory's removal, which says so
	}
}

// syncBuffer is a bytes.Buffer that a process writes while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
