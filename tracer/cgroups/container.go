// Package cgroups owns what tcpfsm knows of cgroup v2: where the
// hierarchy is mounted, a cgroup's id from its path (Lookup, Resolver.ID)
// and its path from the id the BPF program reports (Resolver.Path), and
// the container a path belongs to (ParseContainer).
package cgroups

import (
	"slices"
	"strconv"
	"strings"
)

// Runtimes ParseContainer reports.
const (
	RuntimeDocker     = "docker"
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "cri-o"
	RuntimePodman     = "podman"
	RuntimeLXC        = "lxc"
	RuntimeNspawn     = "systemd-nspawn"
)

// Container names a container: its runtime and its id as the runtime's
// own tools show it (docker ps, crictl ps, podman ps, lxc-ls, machinectl).
type Container struct {
	Runtime string
	ID      string
}

// scopes are the container cgroups named prefix, id, suffix. The systemd
// cgroup drivers make "<prefix><id>.scope" units, the cgroupfs ones bare
// names. The id is 64 hex digits, but for LXC and nspawn a name.
var scopes = []struct{ prefix, suffix, runtime string }{
	{"docker-", ".scope", RuntimeDocker},             // dockerd, systemd driver
	{"cri-containerd-", ".scope", RuntimeContainerd}, // containerd CRI, systemd driver
	{"nerdctl-", ".scope", RuntimeContainerd},        // nerdctl, systemd driver
	{"crio-", ".scope", RuntimeCRIO},                 // cri-o, systemd driver
	{"crio-", "", RuntimeCRIO},                       // cri-o, cgroupfs driver
	{"libpod-", ".scope", RuntimePodman},             // podman, systemd driver
	{"libpod-", "", RuntimePodman},                   // podman, cgroupfs driver
	{"lxc.payload.", "", RuntimeLXC},                 // LXC 4+ and LXD: id is the name
	{"systemd-nspawn@", ".service", RuntimeNspawn},   // machinectl start NAME
	{"machine-", ".scope", RuntimeNspawn},            // systemd-nspawn NAME, see below
}

// ParseContainer finds the container a cgroup v2 path (relative to the
// cgroup2 mount, such as "/system.slice/docker-<id>.scope") belongs to.
//
// The innermost container wins, so docker in docker resolves to the inner
// container. A cgroup below a container's cgroup belongs to that
// container: payloads create their own children ("/docker-<id>.scope/init"
// when the container runs systemd, LXC's ".lxc", podman's "container").
//
// Recognised, with <id> exactly 64 lowercase hex digits:
//
//	docker      /docker/<id>                        cgroupfs driver
//	            .../docker-<id>.scope               systemd driver
//	containerd  .../cri-containerd-<id>.scope       CRI, systemd driver
//	            /kubepods/[QOS/]pod<uid>/<id>       CRI, cgroupfs driver
//	            .../<slice>:cri-containerd:<id>     systemd paths given to a cgroupfs runc
//	            .../nerdctl-<id>.scope              nerdctl, systemd driver
//	cri-o       .../crio-<id>.scope, .../crio-<id>  systemd, cgroupfs driver
//	podman      .../libpod-<id>.scope, .../libpod-<id>
//	lxc         /lxc.payload.<name>                 LXC 4+ and LXD
//	systemd-nspawn
//	            .../systemd-nspawn@<name>.service   but not its supervisor child
//	            .../machine-<name>.scope/payload    only with nspawn's payload child
//
// Deliberately not recognised:
//   - crio-conmon-<id>, libpod-conmon-<id>, podman's cgroupfs "conmon", and
//     lxc.monitor.<name>: they hold the runtime's monitor process, which
//     runs outside the container; its sockets are not the container's.
//   - plain containerd's /<namespace>/<id>: the namespace is any name the
//     client picked and ctr's ids are arbitrary strings, so nothing in the
//     path says "containerd"; any tool's 64 hex digit child of a top-level
//     cgroup would be misreported.
//   - a bare 64 hex digit name anywhere else (docker --cgroup-parent):
//     the runtime cannot be told.
//   - machine-<name>.scope without a payload child: systemd-machined
//     registers VMs the same way (libvirt's machine-qemu\x2d1\x2dvm.scope,
//     systemd-vmspawn); only nspawn creates "payload" inside.
//
// A bare id under kubepods is reported as containerd: kubelet's cgroupfs
// layout does not name the runtime, and since dockershim left Kubernetes
// (1.24) containerd is what writes it (cri-dockerd would look the same).
// LXC and nspawn ids are container names ([A-Za-z0-9._-], systemd's \xNN
// escapes undone). An LXC name may carry the "-N" suffix LXC adds when a
// stale cgroup of the same name was in the way.
func ParseContainer(path string) (Container, bool) {
	parts := strings.FieldsFunc(path, func(r rune) bool { return r == '/' })
	for i := len(parts) - 1; i >= 0; i-- {
		if c, ok := parseComponent(parts, i); ok {
			return c, true
		}
	}
	return Container{}, false
}

// parseComponent matches parts[i], with its ancestors and child as context.
func parseComponent(parts []string, i int) (Container, bool) {
	name := parts[i]
	var parent, child string
	if i > 0 {
		parent = parts[i-1]
	}
	if i+1 < len(parts) {
		child = parts[i+1]
	}

	if isHexID(name) {
		switch {
		case parent == "docker":
			return Container{Runtime: RuntimeDocker, ID: name}, true
		case strings.HasPrefix(parent, "pod") && slices.Contains(parts[:i], "kubepods"):
			return Container{Runtime: RuntimeContainerd, ID: name}, true
		}
		return Container{}, false
	}
	// runc's cgroupfs manager takes a systemd "slice:prefix:name" path
	// literally when containerd and kubelet disagree on the driver.
	if _, id, ok := strings.Cut(name, ":cri-containerd:"); ok && isHexID(id) {
		return Container{Runtime: RuntimeContainerd, ID: id}, true
	}

	for _, s := range scopes {
		id, ok := strings.CutPrefix(name, s.prefix)
		if !ok {
			continue
		}
		if id, ok = strings.CutSuffix(id, s.suffix); !ok {
			continue
		}
		switch s.runtime {
		case RuntimeLXC:
			if isName(id) {
				return Container{Runtime: s.runtime, ID: id}, true
			}
		case RuntimeNspawn:
			// nspawn runs itself in "supervisor" next to the container's
			// "payload"; a machine scope is only nspawn's with a payload.
			if child == "supervisor" || (s.prefix == "machine-" && child != "payload") {
				continue
			}
			if id, ok := unescapeUnit(id); ok && isName(id) {
				return Container{Runtime: s.runtime, ID: id}, true
			}
		default:
			if isHexID(id) {
				return Container{Runtime: s.runtime, ID: id}, true
			}
		}
	}
	return Container{}, false
}

// isHexID reports whether s is an OCI runtime's container id: 64
// lowercase hex digits (256 random bits), as docker, nerdctl, kubelet
// through containerd or cri-o, and podman make them.
func isHexID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// isName accepts the container names of LXC/LXD and systemd-machined,
// which are host-name like; anything else is more likely a stray cgroup
// than a container, and would be awkward to print.
func isName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// unescapeUnit undoes systemd's unit name escaping of a machine name
// ("foo\x2dbar" is "foo-bar").
func unescapeUnit(s string) (string, bool) {
	if !strings.Contains(s, `\`) {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) || s[i+1] != 'x' {
			return "", false
		}
		n, err := strconv.ParseUint(s[i+2:i+4], 16, 8)
		if err != nil {
			return "", false
		}
		b.WriteByte(byte(n))
		i += 3
	}
	return b.String(), true
}
