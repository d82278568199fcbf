package session

import (
	"net"
	"os"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/sockdiag"
)

// holdBack keeps back only the sockets no record holds that a file
// refers to, in order, up to reconOwnersMax; the rest go on at once.
func TestReconcileHoldBack(t *testing.T) {
	held := map[uint16]bool{1: true, 3: true}
	r := &reconciler{hooks: reconHooks{unheld: func(socks []lifecycle.Socket, miss []bool) {
		for i := range socks {
			miss[i] = !held[socks[i].Lport]
		}
	}}}
	chunk := []lifecycle.Socket{{Lport: 1}, {Lport: 2}, {Lport: 3}, {Lport: 4}, {Lport: 5}}
	inodes := []uint32{11, 12, 13, 0, 15} // 4: a time-wait socket, no file
	var ob ownerBatch
	kept := r.holdBack(chunk, inodes, &ob)
	var got []uint16
	for _, s := range kept {
		got = append(got, s.Lport)
	}
	if len(got) != 3 || got[0] != 1 || got[1] != 3 || got[2] != 4 {
		t.Errorf("sent on: %v, want [1 3 4]", got)
	}
	if len(ob.socks) != 2 || ob.socks[0].Lport != 2 || ob.socks[1].Lport != 5 || ob.inodes[0] != 12 || ob.inodes[1] != 15 {
		t.Errorf("kept back: %+v %v", ob.socks, ob.inodes)
	}
	// Full: the next ones go on without owners.
	ob.socks = make([]lifecycle.Socket, reconOwnersMax)
	ob.inodes = make([]uint32, reconOwnersMax)
	if kept := r.holdBack([]lifecycle.Socket{{Lport: 6}}, []uint32{16}, &ob); len(kept) != 1 || len(ob.socks) != reconOwnersMax {
		t.Errorf("past the bound: sent %d, kept back %d", len(kept), len(ob.socks))
	}
}

// owners fills in what /proc tells: this process for its own socket,
// nothing for an inode no one holds; the cgroup's id by its path.
func TestReconcileOwners(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d, err := sockdiag.Open()
	if err != nil {
		t.Skipf("sock_diag: %v", err)
	}
	defer d.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	var ino uint32
	if err := d.Dump(1<<uint(probe.StateListen), func(s *sockdiag.Socket) error {
		if s.Sport == port {
			ino = s.Inode
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if ino == 0 {
		t.Fatal("own listener not dumped")
	}
	var asked []string
	r := &reconciler{hooks: reconHooks{cgroupID: func(path string) uint64 { asked = append(asked, path); return 42 }}}
	ob := ownerBatch{socks: []lifecycle.Socket{{Lport: port, State: probe.StateListen}, {Lport: 9}},
		inodes: []uint32{ino, 0xfffffff0}}
	paths := r.owners(&ob)
	comm, _ := os.ReadFile("/proc/self/comm")
	if s := ob.socks[0]; s.Pid != uint32(os.Getpid()) || string(probe.TrimComm(&s.Comm))+"\n" != string(comm) || s.CgroupID != 42 {
		t.Errorf("own socket: pid %d comm %q cgroup %d", s.Pid, probe.TrimComm(&s.Comm), s.CgroupID)
	}
	if s := ob.socks[1]; s.Pid != 0 || s.CgroupID != 0 || s.Comm != ([16]byte{}) {
		t.Errorf("no one's socket: %+v", s)
	}
	if len(asked) != 1 || len(paths) != 1 || paths[42] != asked[0] {
		t.Errorf("cgroup paths %v, asked %v", paths, asked)
	}
}
