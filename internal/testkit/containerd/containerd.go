// Package containerd runs a private containerd with its CRI plugin for a
// test: in the test's temporary directory, with runc and the cgroupfs
// driver, images imported from hand-built OCI archives (no registry), and
// pods and containers made through the CRI API as kubelet makes them.
// Everything is torn down when the test ends, failed or not: pods stopped
// and removed, containerd and its shims stopped, mounts and the pods'
// cgroups removed.
//
// It needs root, containerd, ctr, runc, the CNI loopback plugin and
// busybox-static (.ci/run installs them); without them a test skips,
// and with CI=true it fails.
package containerd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tcpfsm/tcpfsm/internal/testkit/ociimage"
)

// SandboxImage is the pause image every pod's sandbox runs.
const SandboxImage = "localhost/tcpfsm/pause:1"

// Binaries the kit runs.
var required = []string{"containerd", "ctr", "runc"}

// Files the kit reads.
var requiredFiles = []string{"/bin/busybox", "/usr/lib/cni/loopback"}

func inCI() bool { return os.Getenv("CI") == "true" }

// Require skips the test when a private containerd cannot run here, and
// fails it instead with CI=true.
func Require(t testing.TB) {
	t.Helper()
	fail := t.Skipf
	if inCI() {
		fail = t.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("a private containerd needs root")
	}
	for _, b := range required {
		if _, err := exec.LookPath(b); err != nil {
			fail("needs %s (Debian containerd, runc): %v", b, err)
		}
	}
	for _, f := range requiredFiles {
		if _, err := os.Stat(f); err != nil {
			fail("needs %s (Debian busybox-static, containernetworking-plugins): %v", f, err)
		}
	}
}

// Containerd is a running private containerd.
type Containerd struct {
	Dir    string // its root, state, config, logs
	Socket string // its gRPC socket: the CRI endpoint
	// Runtime and Images are CRI clients of it; they reconnect after
	// Restart.
	Runtime runtimeapi.RuntimeServiceClient
	Images  runtimeapi.ImageServiceClient

	t    testing.TB
	conn *grpc.ClientConn
	cmd  *exec.Cmd
	exit chan struct{}
	log  *os.File

	sandboxes []string // to stop and remove at the end
	podUIDs   []string // their cgroups to remove
}

// Start starts a private containerd that lives until the test ends, with
// the pause image imported.
func Start(t testing.TB) *Containerd {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	// unix socket paths are limited to 107 bytes; t.TempDir's can be long.
	if len(dir) > 60 {
		d, err := os.MkdirTemp("", "ctrd")
		if err != nil {
			t.Fatal(err)
		}
		dir = d
		t.Cleanup(func() { os.RemoveAll(d) })
	}
	c := &Containerd{Dir: dir, Socket: filepath.Join(dir, "containerd.sock"), t: t}
	if err := c.writeConfig(); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+c.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c.conn = conn
	c.Runtime = runtimeapi.NewRuntimeServiceClient(conn)
	c.Images = runtimeapi.NewImageServiceClient(conn)
	t.Cleanup(c.teardown)
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
	c.Import(t, ociimage.Busybox(SandboxImage))
	return c
}

// config is CONTAINERS.md's, in the test's directory. The CNI network is
// a stand-in plugin (cni/bin/fake-ip) that hands a pod the IP the test
// wrote for it without configuring anything: containerd records it as
// the sandbox IP, and no traffic leaves the pod's own namespace.
const config = `version = 2
root = "{{dir}}/root"
state = "{{dir}}/state"
[grpc]
  address = "{{dir}}/containerd.sock"
[ttrpc]
  address = "{{dir}}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "` + SandboxImage + `"
  restrict_oom_score_adj = true
  disable_apparmor = true
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{dir}}/cni/bin"
    conf_dir = "{{dir}}/cni/conf"
`

const cniConf = `{"cniVersion":"0.4.0","name":"tcpfsm-test","plugins":[{"type":"fake-ip"}]}`

// fakeIP is the stand-in CNI plugin: ADD answers with the IP in
// ips/<pod name>, on an eth0 it does not create.
const fakeIP = `#!/bin/sh
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}';;
ADD)
  pod=$(echo "$CNI_ARGS" | tr ';' '\n' | sed -n 's/^K8S_POD_NAME=//p')
  ip=$(cat "{{dir}}/ips/$pod" 2>/dev/null || echo 127.0.0.254)
  printf '{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"%s"}],"ips":[{"version":"4","address":"%s/32","interface":0}]}\n' "$CNI_NETNS" "$ip";;
*) ;;
esac
`

func (c *Containerd) writeConfig() error {
	for _, d := range []string{"cni/bin", "cni/conf", "ips", "logs"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			return err
		}
	}
	expand := func(s string) []byte { return []byte(strings.ReplaceAll(s, "{{dir}}", c.Dir)) }
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"config.toml", expand(config), 0o644},
		{"cni/conf/10-tcpfsm.conflist", []byte(cniConf), 0o644},
		{"cni/bin/fake-ip", expand(fakeIP), 0o755},
	} {
		if err := os.WriteFile(filepath.Join(c.Dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	// containerd always runs the loopback plugin as well.
	return os.Symlink("/usr/lib/cni/loopback", filepath.Join(c.Dir, "cni/bin/loopback"))
}

// start runs containerd and waits until its CRI plugin answers.
func (c *Containerd) start() error {
	log, err := os.OpenFile(filepath.Join(c.Dir, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("containerd", "--config", filepath.Join(c.Dir, "config.toml"))
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start containerd: %w", err)
	}
	c.cmd, c.log, c.exit = cmd, log, make(chan struct{})
	go func(cmd *exec.Cmd, exit chan struct{}) { _ = cmd.Wait(); close(exit) }(cmd, c.exit)

	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Runtime.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-c.exit:
			return fmt.Errorf("containerd exited: %v\n%s", cmd.ProcessState, c.Log())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd's CRI did not answer in 30s: %w\n%s", err, c.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Running reports whether containerd runs.
func (c *Containerd) Running() bool {
	if c.cmd == nil {
		return false
	}
	select {
	case <-c.exit:
		return false
	default:
		return true
	}
}

// Stop stops containerd (SIGTERM, then SIGKILL after 10s), leaving its
// pods running under their shims, as a runtime restart does.
func (c *Containerd) Stop(t testing.TB) {
	t.Helper()
	if err := c.stop(); err != nil {
		t.Fatal(err)
	}
}

func (c *Containerd) stop() error {
	if !c.Running() {
		return nil
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM) // one that exited already closes exit
	select {
	case <-c.exit:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exit
	}
	c.log.Close()
	return nil
}

// Restart starts containerd again after Stop, with the same state.
func (c *Containerd) Restart(t testing.TB) {
	t.Helper()
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
}

// Log is containerd's output so far.
func (c *Containerd) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "containerd.log"))
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// Import writes img as an OCI archive and imports it into the CRI's
// namespace (k8s.io), unpacked for the native snapshotter.
func (c *Containerd) Import(t testing.TB, img ociimage.Image) ociimage.Written {
	t.Helper()
	w, err := ociimage.Write(filepath.Join(c.Dir, "image-"+strconv.Itoa(int(time.Now().UnixNano()))+".tar"), img)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ctr", "-a", c.Socket, "-n", "k8s.io", "images", "import",
		"--all-platforms", "--snapshotter", "native", w.Path).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr images import %s: %v\n%s", img.Name, err, out)
	}
	return w
}

// Pod describes a pod's sandbox.
type Pod struct {
	Name, Namespace, UID string // UID "" makes one up
	Labels               map[string]string
	Annotations          map[string]string
	// IP, when set, puts the pod in its own network namespace with this
	// sandbox IP (from the stand-in CNI plugin); otherwise the pod uses
	// the host's network, like a hostNetwork pod.
	IP string
}

// Sandbox is a pod that runs.
type Sandbox struct {
	ID     string
	Pod    Pod
	Config *runtimeapi.PodSandboxConfig
}

// CgroupParent is where kubelet's cgroupfs driver puts a BestEffort pod.
func CgroupParent(uid string) string { return "/kubepods/besteffort/pod" + uid }

// RunPod creates and starts a pod sandbox as kubelet does: metadata,
// labels with kubelet's own io.kubernetes.pod.* added, the cgroup parent
// of a BestEffort pod.
func (c *Containerd) RunPod(t testing.TB, p Pod) *Sandbox {
	t.Helper()
	if p.UID == "" {
		p.UID = NewUID()
	}
	labels := map[string]string{
		"io.kubernetes.pod.name":      p.Name,
		"io.kubernetes.pod.namespace": p.Namespace,
		"io.kubernetes.pod.uid":       p.UID,
	}
	for k, v := range p.Labels {
		labels[k] = v
	}
	network := runtimeapi.NamespaceMode_NODE
	if p.IP != "" {
		network = runtimeapi.NamespaceMode_POD
		if err := os.WriteFile(filepath.Join(c.Dir, "ips", p.Name), []byte(p.IP), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	logDir := filepath.Join(c.Dir, "logs", p.UID)
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: p.Name, Namespace: p.Namespace, Uid: p.UID},
		Labels:       labels,
		Annotations:  p.Annotations,
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: CgroupParent(p.UID),
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: network},
			},
		},
	}
	c.podUIDs = append(c.podUIDs, p.UID)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := c.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatalf("RunPodSandbox %s/%s: %v\n%s", p.Namespace, p.Name, err, c.Log())
	}
	c.sandboxes = append(c.sandboxes, resp.PodSandboxId)
	return &Sandbox{ID: resp.PodSandboxId, Pod: p, Config: cfg}
}

// Container describes a container of a pod.
type Container struct {
	Name  string
	Image string // a reference or an image id, as kubelet passes it
	// UserImage is CRI's user_specified_image (kubelet 1.30+); containerd
	// 1.6 does not keep it.
	UserImage string
	Command   []string // default: the image's entrypoint
}

// RunContainer creates and starts a container in the pod, with the
// labels kubelet sets; it returns the container's id.
func (c *Containerd) RunContainer(t testing.TB, sb *Sandbox, ctr Container) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: ctr.Name},
		Image:    &runtimeapi.ImageSpec{Image: ctr.Image, UserSpecifiedImage: ctr.UserImage},
		Command:  ctr.Command,
		Labels: map[string]string{
			"io.kubernetes.container.name": ctr.Name,
			"io.kubernetes.pod.name":       sb.Pod.Name,
			"io.kubernetes.pod.namespace":  sb.Pod.Namespace,
			"io.kubernetes.pod.uid":        sb.Pod.UID,
		},
		LogPath: ctr.Name + ".log",
		Linux:   &runtimeapi.LinuxContainerConfig{},
	}
	created, err := c.Runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: sb.ID, Config: cfg, SandboxConfig: sb.Config,
	})
	if err != nil {
		t.Fatalf("CreateContainer %s in %s: %v\n%s", ctr.Name, sb.Pod.Name, err, c.Log())
	}
	if _, err := c.Runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		t.Fatalf("StartContainer %s: %v\n%s", ctr.Name, err, c.Log())
	}
	return created.ContainerId
}

// PID is the container's init process, from the verbose status.
func (c *Containerd) PID(t testing.TB, id string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ Pid int }
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil || info.Pid == 0 {
		t.Fatalf("container %s: no pid in the verbose status (%v): %q", id, err, st.Info["info"])
	}
	return info.Pid
}

// CgroupPath is the unified (v2) cgroup path of a process, as
// /proc/PID/cgroup's "0::" line gives it.
func CgroupPath(t testing.TB, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p
		}
	}
	t.Fatalf("process %d has no cgroup v2 path:\n%s", pid, b)
	return ""
}

// NewUID makes up a pod uid as the API server does (a random UUID).
func NewUID() string {
	var b [16]byte
	rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
