package probe

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
)

// Filter selects, in the kernel, which events reach user space. Empty
// fields select everything. Filters on the socket (ports, family, netns)
// apply to every event of a connection; filters on the owner (PID, cgroup)
// need the owner to be known, so an event with an unknown owner never
// passes them.
type Filter struct {
	PID         uint32   // owner's process id
	NetNS       uint32   // network namespace inode
	Family      uint8    // AFInet or AFInet6
	LocalPorts  []uint16 // any of these local ports
	RemotePorts []uint16 // any of these remote ports
	// CgroupID and CgroupLevel select owners inside a cgroup v2 and its
	// descendants; CgroupFilter fills both from a path.
	CgroupID    uint64
	CgroupLevel uint32
}

func (f *Filter) validate() error {
	if f.Family != 0 && f.Family != AFInet && f.Family != AFInet6 {
		return fmt.Errorf("filter: unknown address family %d", f.Family)
	}
	for _, p := range f.LocalPorts {
		if p == 0 {
			return fmt.Errorf("filter: local port 0")
		}
	}
	for _, p := range f.RemotePorts {
		if p == 0 {
			return fmt.Errorf("filter: remote port 0")
		}
	}
	return nil
}

// portBits is one bit per port, as the BPF program's lport_bits and
// rport_bits read them.
func portBits(ports []uint16) *[1024]uint64 {
	var bits [1024]uint64
	for _, p := range ports {
		bits[p>>6] |= 1 << (p & 63)
	}
	return &bits
}

func b2u8(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

func (f *Filter) apply(spec *ebpf.CollectionSpec) error {
	set := []struct {
		name  string
		value any
	}{
		{tcpfsmVarFilterPid, f.PID},
		{tcpfsmVarFilterNetns, f.NetNS},
		{tcpfsmVarFilterFamily, f.Family},
		{tcpfsmVarFilterLports, b2u8(len(f.LocalPorts) > 0)},
		{tcpfsmVarFilterRports, b2u8(len(f.RemotePorts) > 0)},
		{tcpfsmVarLportBits, portBits(f.LocalPorts)},
		{tcpfsmVarRportBits, portBits(f.RemotePorts)},
		{tcpfsmVarFilterCgroup, f.CgroupID},
		{tcpfsmVarFilterCgroupLevel, f.CgroupLevel},
	}
	for _, s := range set {
		v, ok := spec.Variables[s.name]
		if !ok {
			return fmt.Errorf("BPF object has no variable %s", s.name)
		}
		if err := v.Set(s.value); err != nil {
			return fmt.Errorf("set %s: %w", s.name, err)
		}
	}
	return nil
}

// CgroupFilter resolves a cgroup v2 directory (absolute, or relative to
// the cgroup2 mount) into the id and depth the kernel filter compares.
func CgroupFilter(path string) (id uint64, level uint32, err error) { return cgroups.Lookup(path) }

// NetNSInode resolves a network namespace given as an inode number, a
// file such as /run/netns/NAME or /proc/PID/ns/net, or a name under
// /run/netns.
func NetNSInode(s string) (uint32, error) {
	var n uint64
	if _, err := fmt.Sscanf(s, "%d", &n); err == nil && fmt.Sprint(n) == s {
		if n == 0 || n > 1<<32-1 {
			return 0, fmt.Errorf("netns %q: not an inode number", s)
		}
		return uint32(n), nil
	}
	path, _ := NetNSPath(s)
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("netns %q: %w", s, err)
	}
	if err := checkNetNS(path); err != nil {
		return 0, err
	}
	return uint32(st.Ino), nil
}

// checkNetNS makes sure a path names a network namespace: any other file
// has an inode number too, and a filter on it would match nothing.
func checkNetNS(path string) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return fmt.Errorf("netns %q: %w", path, err)
	}
	if fs.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("%s is not a namespace (want /proc/PID/ns/net, /run/netns/NAME or an inode number)", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil // a namespace that may not be opened here: the inode still filters
	}
	defer f.Close()
	if t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE); err == nil && t != unix.CLONE_NEWNET {
		return fmt.Errorf("%s is a namespace, but not a network namespace", path)
	}
	return nil
}

// Match applies the filter to a decoded event in user space, as the
// kernel does before the ring buffer; replayed events need it. A cgroup
// matches by exact id here: the hierarchy of a recording is not known.
func (f *Filter) Match(e *Event) bool {
	if f.PID != 0 && (!e.OwnerKnown() || e.Pid != f.PID) {
		return false
	}
	if f.NetNS != 0 && e.Netns != f.NetNS {
		return false
	}
	if f.Family != 0 && e.Family != f.Family {
		return false
	}
	if f.CgroupID != 0 && (!e.OwnerKnown() || e.CgroupId != f.CgroupID) {
		return false
	}
	if len(f.LocalPorts) > 0 && !hasPort(f.LocalPorts, e.Sport) {
		return false
	}
	if len(f.RemotePorts) > 0 && !hasPort(f.RemotePorts, e.Dport) {
		return false
	}
	return true
}

func hasPort(ports []uint16, p uint16) bool {
	for _, q := range ports {
		if q == p {
			return true
		}
	}
	return false
}

// NetNSPath is the file a --netns value names: itself when it is a path,
// /run/netns/NAME for a name; an inode number names no file.
func NetNSPath(s string) (string, error) {
	if _, err := strconv.ParseUint(s, 10, 32); err == nil {
		return "", fmt.Errorf("netns %q is an inode number, not a file", s)
	}
	if !strings.ContainsRune(s, '/') {
		return filepath.Join("/run/netns", s), nil
	}
	return s, nil
}
