package cgroups

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Mount returns where the cgroup v2 hierarchy is mounted: the kernel's
// cgroup ids refer to it, whether the host runs a pure v2 setup
// (/sys/fs/cgroup) or a hybrid one (/sys/fs/cgroup/unified).
func Mount() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if f := strings.Fields(pre); len(f) >= 5 && f[3] == "/" {
			return f[4], nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 hierarchy is mounted")
}

// idOf is the id of the cgroup whose directory fi describes: a cgroup v2
// id, as bpf_get_current_cgroup_id() reports it, is the inode number of
// its directory in the cgroup2 file system. 0 when fi has no inode.
func idOf(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// Lookup resolves a cgroup v2 directory, absolute or relative to the
// cgroup2 mount, into its id and its depth below the mount: what the
// kernel filter compares (probe.Filter's CgroupID and CgroupLevel).
func Lookup(path string) (id uint64, level uint32, err error) {
	root, err := Mount()
	if err != nil {
		return 0, 0, err
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(root, path)
	}
	path = filepath.Clean(path)
	if path != root && !strings.HasPrefix(path, root+"/") {
		return 0, 0, fmt.Errorf("cgroup %s: not under the cgroup v2 mount %s", path, root)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, fmt.Errorf("cgroup: %w", err)
	}
	if !fi.IsDir() {
		return 0, 0, fmt.Errorf("cgroup %s: not a directory", path)
	}
	if rel := strings.TrimPrefix(path, root); rel != "" {
		level = uint32(strings.Count(rel, "/"))
	}
	return idOf(fi), level, nil
}

// ID returns the id of the cgroup at path, relative to the cgroup2 mount
// the resolver walks, as /proc/PID/cgroup names it ("/system.slice/x").
// It is 0 when there is no such cgroup (any more), or no mount.
func (r *Resolver) ID(path string) uint64 {
	if r.root == "" || path == "" {
		return 0
	}
	fi, err := os.Stat(filepath.Join(r.root, path))
	if err != nil {
		return 0
	}
	return idOf(fi)
}

// String names a container as tcpfsm's records and labels do:
// "runtime:id".
func (c Container) String() string { return c.Runtime + ":" + c.ID }
