package sockdiag_test

// Who holds a socket (the /proc owner lookup) and which network namespace
// a dump reads.

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/sockdiag"
	"golang.org/x/sys/unix"
)

func ownCgroup(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return strings.TrimSpace(p)
		}
	}
	return ""
}

// Owners finds the test process for its own listener, a helper process
// for the listener it made, and nobody for an inode no one holds.
func TestOwners(t *testing.T) {
	requireRoot(t)
	ns := nettest.NewNS(t)
	d := openIn(t, ns)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	p := ns.StartHelper(t, nettest.Helper{Comm: "sockdiag-owner", Role: "server", Network: "tcp4", Addr: "127.0.0.1:0"})
	port := p.Port(t)

	var helperIno uint32
	for _, s := range dump(t, d, 1<<stateListen) {
		if s.Sport == uint16(port) {
			helperIno = s.Inode
		}
	}
	if helperIno == 0 {
		t.Fatalf("helper's listener on port %d not dumped", port)
	}
	mine := inodeOf(t, ln)
	const nobody = 0xfffffff0
	got, err := sockdiag.Owners(map[uint32]struct{}{mine: {}, helperIno: {}, nobody: {}})
	if err != nil {
		t.Fatal(err)
	}
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32]sockdiag.Owner{
		mine:      {Pid: uint32(os.Getpid()), Comm: string(bytes.TrimSpace(comm)), CgroupPath: ownCgroup(t, os.Getpid())},
		helperIno: {Pid: uint32(p.Pid), Comm: "sockdiag-owner", CgroupPath: ownCgroup(t, p.Pid)},
	}
	if len(got) != len(want) || got[mine] != want[mine] || got[helperIno] != want[helperIno] {
		t.Errorf("Owners:\n got %+v\nwant %+v", got, want)
	}
	// Bounded in time: past its deadline, a scan reads no process more;
	// before it, the same as Owners.
	wanted := map[uint32]struct{}{mine: {}, helperIno: {}}
	if got, err := sockdiag.OwnersUntil(wanted, time.Now().Add(-time.Second)); err != nil || len(got) != 0 {
		t.Errorf("OwnersUntil past its deadline = %v, %v; want nothing", got, err)
	}
	if got, err := sockdiag.OwnersUntil(wanted, time.Now().Add(time.Minute)); err != nil || len(got) != 2 ||
		got[mine] != want[mine] || got[helperIno] != want[helperIno] {
		t.Errorf("OwnersUntil = %+v, %v; want %+v", got, err, want)
	}

	// Let the helper finish.
	c, err := ns.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	p.Done(t)

	if got, err := sockdiag.Owners(nil); err != nil || len(got) != 0 {
		t.Errorf("Owners(nil) = %v, %v; want nothing", got, err)
	}
}

func nsInode(t *testing.T, path string) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

// NetNamespaces sees the namespaces processes are in: the test's
// namespace, held by an open file only, appears once a process runs in it.
func TestNetNamespaces(t *testing.T) {
	requireRoot(t)
	ns := nettest.NewNS(t)
	find := func() (own, test *sockdiag.NetNS) {
		t.Helper()
		list, err := sockdiag.NetNamespaces()
		if err != nil {
			t.Fatal(err)
		}
		ownIno := nsInode(t, "/proc/self/ns/net")
		seen := map[uint32]bool{}
		for i := range list {
			n := &list[i]
			if seen[n.Inode] {
				t.Errorf("namespace %d listed twice", n.Inode)
			}
			seen[n.Inode] = true
			switch n.Inode {
			case ownIno:
				own = n
			case ns.Inode:
				test = n
			}
		}
		return own, test
	}

	own, test := find()
	if own == nil {
		t.Fatal("the test process's namespace is not listed")
	}
	if test != nil {
		t.Fatalf("the test namespace is listed before any process is in it: %+v", test)
	}

	p := ns.StartHelper(t, nettest.Helper{Comm: "sockdiag-netns", Role: "server", Network: "tcp4", Addr: "127.0.0.1:0", Hold: true})
	_, test = find()
	if want := fmt.Sprintf("/proc/%d/ns/net", p.Pid); test == nil || test.Path != want {
		t.Fatalf("test namespace %d: got %+v, want path %s", ns.Inode, test, want)
	}
	if ino := nsInode(t, test.Path); ino != ns.Inode {
		t.Fatalf("%s is namespace %d, want %d", test.Path, ino, ns.Inode)
	}
}
