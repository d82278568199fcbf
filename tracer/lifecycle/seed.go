package lifecycle

import "github.com/tcpfsm/tcpfsm/tracer/probe"

// Seeding: the sock_diag snapshot at start lists connections older than
// the tracer. Their first event shows them midway; the snapshot gives such
// a record its owner and, with the listeners it saw, its role.

// seed is what the start snapshot knew of a socket.
type seed struct {
	state    probe.State
	pid      uint32
	comm     [16]byte
	cgroupID uint64
	hasOwner bool
}

type listenKey struct {
	netns uint32
	port  uint16
}

// observeSnapshot keeps what a snapshot dump says of a socket not in
// TIME_WAIT, for the record its first event will open.
func (b *Builder) observeSnapshot(s *Socket) {
	if s.State == probe.StateListen {
		b.listening[listenKey{s.NetNS, s.Lport}] = true
	}
	if len(b.seeds) < b.cfg.MaxTracked {
		b.seeds[s.key()] = seed{state: s.State, pid: s.Pid, comm: s.Comm, cgroupID: s.CgroupID, hasOwner: s.Pid != 0}
	}
}

// seedMidway completes a record first seen midway from the snapshot: its
// owner and role when the snapshot listed the socket, else a role guessed
// from the listeners it saw.
func (b *Builder) seedMidway(r *Record, k tupleKey) {
	if s, ok := b.seeds[k]; ok {
		r.Seeded = true
		b.stats.SeededStart++
		if s.hasOwner {
			r.Pid, r.Comm, r.CgroupID, r.Owner = s.pid, s.comm, s.cgroupID, probe.OwnerTask
		}
		if s.state == probe.StateListen {
			r.Role = RoleListener
		}
		delete(b.seeds, k)
	}
	// The role of a connection seen midway: its local port is a
	// listener's, or the peer it reaches is a local listener.
	if r.Role == RoleUnknown {
		switch {
		case b.listening[listenKey{r.NetNS, r.Lport}]:
			r.Role = RolePassive
		case b.listening[listenKey{r.NetNS, r.Rport}] && r.Laddr == r.Raddr:
			r.Role = RoleActive
		}
	}
}
