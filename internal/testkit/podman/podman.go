// Package podman runs podman's API service (the Docker Engine compatible
// API) for a test, with its own storage in the test's temporary
// directory: runc, the cgroupfs manager, vfs storage, host network,
// images loaded from hand-built OCI archives. Containers are removed
// and the service stopped when the test ends, failed or not.
//
// It needs root, podman, runc and busybox-static (.ci/run installs
// them); without them a test skips, and with CI=true it fails.
package podman

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpfsm/tcpfsm/internal/testkit/ociimage"
)

// Require skips the test when podman cannot run here, and fails it
// instead with CI=true.
func Require(t testing.TB) {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("CI") == "true" {
		fail = t.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("podman with the cgroupfs manager needs root")
	}
	for _, b := range []string{"podman", "runc"} {
		if _, err := exec.LookPath(b); err != nil {
			fail("needs %s (Debian podman, runc): %v", b, err)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		fail("needs /bin/busybox (Debian busybox-static): %v", err)
	}
}

// Podman is a private podman store with its API service.
type Podman struct {
	Dir    string
	Socket string // the API socket, e.g. .../api.sock

	t    testing.TB
	cmd  *exec.Cmd
	exit chan struct{}
	ids  []string // containers run
}

// Start starts podman's API service on a socket in a private directory;
// it lives until the test ends.
func Start(t testing.TB) *Podman {
	t.Helper()
	Require(t)
	dir, err := os.MkdirTemp("", "pm")
	if err != nil {
		t.Fatal(err)
	}
	p := &Podman{Dir: dir, Socket: filepath.Join(dir, "api.sock"), t: t}
	t.Cleanup(p.teardown)
	if err := p.StartService(); err != nil {
		t.Fatal(err)
	}
	return p
}

// args are the global options of every podman call: the private store.
func (p *Podman) args(a ...string) []string {
	return append([]string{
		"--root", filepath.Join(p.Dir, "root"), "--runroot", filepath.Join(p.Dir, "run"),
		"--tmpdir", filepath.Join(p.Dir, "tmp"), "--storage-driver", "vfs",
		"--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
	}, a...)
}

// Podman runs the podman command with the private store's options.
func (p *Podman) Podman(t testing.TB, a ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "podman", p.args(a...)...).Output()
	if err != nil {
		var stderr []byte
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = ee.Stderr
		}
		t.Fatalf("podman %s: %v\n%s%s", strings.Join(a, " "), err, out, stderr)
	}
	return strings.TrimSpace(string(out))
}

// StartService starts the API service (again, after StopService) and
// waits until it answers.
func (p *Podman) StartService() error {
	log, err := os.OpenFile(filepath.Join(p.Dir, "service.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command("podman", p.args("system", "service", "--time=0", "unix://"+p.Socket)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start podman system service: %w", err)
	}
	p.cmd, p.exit = cmd, make(chan struct{})
	go func(cmd *exec.Cmd, exit chan struct{}) { _ = cmd.Wait(); close(exit) }(cmd, p.exit)
	for deadline := time.Now().Add(30 * time.Second); ; {
		if c, err := net.Dial("unix", p.Socket); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.exit:
			b, _ := os.ReadFile(filepath.Join(p.Dir, "service.log"))
			return fmt.Errorf("podman system service exited: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("podman's API socket did not appear in 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StopService stops the API service; containers keep running under
// conmon.
func (p *Podman) StopService(t testing.TB) {
	t.Helper()
	p.stopService()
}

func (p *Podman) stopService() {
	if p.cmd == nil {
		return
	}
	select {
	case <-p.exit:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM) // one that exited already closes exit
	select {
	case <-p.exit:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exit
	}
}

// Load writes img as an OCI archive and loads it.
func (p *Podman) Load(t testing.TB, img ociimage.Image) ociimage.Written {
	t.Helper()
	w, err := ociimage.Write(filepath.Join(p.Dir, "image.tar"), img)
	if err != nil {
		t.Fatal(err)
	}
	p.Podman(t, "load", "-q", "-i", w.Path)
	return w
}

// Run starts a detached host-network container and returns its id.
func (p *Podman) Run(t testing.TB, name, image string, labels map[string]string) string {
	t.Helper()
	a := []string{"run", "-d", "--name", name, "--network", "host",
		"--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1000:1000"}
	var keys []string
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		a = append(a, "--label", k+"="+labels[k])
	}
	id := p.Podman(t, append(a, image)...)
	p.ids = append(p.ids, id)
	return id
}

// PID is the container's init process.
func (p *Podman) PID(t testing.TB, id string) int {
	t.Helper()
	var pid int
	if _, err := fmt.Sscan(p.Podman(t, "inspect", "-f", "{{.State.Pid}}", id), &pid); err != nil || pid == 0 {
		t.Fatalf("podman inspect %s: no pid (%v)", id, err)
	}
	return pid
}

func (p *Podman) teardown() {
	p.stopService()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "podman", p.args("rm", "-a", "-f", "-t", "0")...).CombinedOutput(); err != nil {
		p.t.Logf("teardown: podman rm -a -f: %v\n%s", err, out)
	}
	// Whatever still runs from this store (conmon, a container): kill it.
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		leftover := bytes.Contains(cmdline, []byte(p.Dir+"/"))
		if cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); !leftover {
			for _, id := range p.ids {
				leftover = leftover || bytes.Contains(cg, []byte("libpod-"+id))
			}
		}
		if leftover {
			p.t.Logf("teardown: killing leftover process %d", pid)
			_ = unix.Kill(pid, unix.SIGKILL) // it may have exited since
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		var mounts []string
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], p.Dir+"/") {
				mounts = append(mounts, f[4])
			}
		}
		sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
		for _, m := range mounts {
			_ = unix.Unmount(m, unix.MNT_DETACH) // what stays mounted fails RemoveAll below, which says so
		}
	}
	if err := os.RemoveAll(p.Dir); err != nil {
		p.t.Logf("teardown: %v", err)
	}
}
