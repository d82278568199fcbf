package containerd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// teardown runs when the test ends: pods stopped and removed (with
// containerd started again if the test left it stopped), containerd
// stopped, then whatever survived killed and unmounted.
func (c *Containerd) teardown() {
	t := c.t
	if len(c.sandboxes) > 0 && !c.Running() {
		if err := c.start(); err != nil {
			t.Logf("teardown: restart containerd to remove pods: %v", err)
		}
	}
	if c.Running() {
		for _, id := range c.sandboxes {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if _, err := c.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
				t.Logf("teardown: StopPodSandbox %s: %v", id, err)
			}
			if _, err := c.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
				t.Logf("teardown: RemovePodSandbox %s: %v", id, err)
			}
			cancel()
		}
	}
	if err := c.stop(); err != nil {
		t.Logf("teardown: stop containerd: %v", err)
	}
	c.conn.Close()
	// What a failed removal left: the shims of this containerd, and the
	// processes in the pods' cgroups.
	for _, pid := range c.leftoverPIDs() {
		t.Logf("teardown: killing leftover process %d", pid)
		_ = unix.Kill(pid, unix.SIGKILL) // it may have exited since
	}
	c.unmount()
	c.removeCgroups()
}

// leftoverPIDs are processes that mention this containerd's socket
// (shims) or sit in one of the test's pod cgroups.
func (c *Containerd) leftoverPIDs() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmdline, []byte(c.Socket)) {
			pids = append(pids, pid)
			continue
		}
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		for _, uid := range c.podUIDs {
			if bytes.Contains(cg, []byte("/pod"+uid+"/")) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// unmount detaches whatever is still mounted below the directory
// (sandbox shm, netns bind mounts), deepest first.
func (c *Containerd) unmount() {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && (f[4] == c.Dir || strings.HasPrefix(f[4], c.Dir+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			c.t.Logf("teardown: unmount %s: %v", m, err)
		}
	}
}

// removeCgroups removes the pods' cgroups runc made for their cgroup
// parents, in every hierarchy; the container cgroups inside are runc's
// and gone with the containers.
func (c *Containerd) removeCgroups() {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	for _, uid := range c.podUIDs {
		for _, root := range roots {
			dir := filepath.Join(root, CgroupParent(uid))
			subs, _ := os.ReadDir(dir)
			for _, s := range subs {
				if s.IsDir() {
					os.Remove(filepath.Join(dir, s.Name()))
				}
			}
			os.Remove(dir)
		}
	}
}
