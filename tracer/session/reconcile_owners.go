package session

import (
	"slices"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/sockdiag"
)

// Owners of the sockets a reconciliation seeds. At start the snapshot
// reads every socket's owner from /proc/*/fd (session.go); a
// reconciliation seeds only the sockets no record holds, so the
// reconciler finds the owners of those alone, on its own goroutine: it
// asks the builder (locked briefly, once per chunk) which of a chunk's
// sockets it holds, keeps back those it does not and that a file refers
// to, and when the namespace's dump has ended reads their owners in one
// /proc scan, bounded in count and time, and sends them with their
// owners. A socket whose owner cannot be read (no process may be
// inspected holding it, it is gone, the scan's bounds) has none. The
// owners travel in the sockets, recorded inputs: a replay repairs with
// the owners the live run found.

const (
	// reconOwnersMax bounds the sockets of one namespace's dump whose
	// owners are looked for; the rest are seeded without.
	reconOwnersMax = 65536
	// reconOwnersTime bounds one owner scan.
	reconOwnersTime = 2 * time.Second
)

// reconHooks are what the reconciler asks the session, from its goroutine.
type reconHooks struct {
	// unheld sets miss[i] for each socket no record holds.
	unheld func(socks []lifecycle.Socket, miss []bool)
	// cgroupID is the id of a cgroup path as /proc/PID/cgroup names it.
	cgroupID func(path string) uint64
}

// ownerBatch: the sockets of a namespace's dump kept back for their owners.
type ownerBatch struct {
	socks  []lifecycle.Socket
	inodes []uint32
}

// holdBack moves into ob the sockets of chunk no record holds that a
// file refers to (inodes[i] != 0) and returns the rest of chunk.
func (r *reconciler) holdBack(chunk []lifecycle.Socket, inodes []uint32, ob *ownerBatch) []lifecycle.Socket {
	if r.hooks.unheld == nil || len(chunk) == 0 {
		return chunk
	}
	r.miss = slices.Grow(r.miss[:0], len(chunk))[:len(chunk)]
	r.hooks.unheld(chunk, r.miss)
	kept := chunk[:0]
	for i := range chunk {
		if r.miss[i] && inodes[i] != 0 && len(ob.socks) < reconOwnersMax {
			ob.socks = append(ob.socks, chunk[i])
			ob.inodes = append(ob.inodes, inodes[i])
			continue
		}
		kept = append(kept, chunk[i])
	}
	return kept
}

// owners fills in the owners of ob's sockets that /proc tells, and
// returns the paths of their cgroups by id.
func (r *reconciler) owners(ob *ownerBatch) map[uint64]string {
	want := make(map[uint32]struct{}, len(ob.inodes))
	for _, ino := range ob.inodes {
		want[ino] = struct{}{}
	}
	found, err := sockdiag.OwnersUntil(want, time.Now().Add(reconOwnersTime))
	if err != nil || len(found) == 0 {
		return nil
	}
	paths := map[uint64]string{}
	for i := range ob.socks {
		o, ok := found[ob.inodes[i]]
		if !ok {
			continue
		}
		s := &ob.socks[i]
		s.Pid = o.Pid
		copy(s.Comm[:15], o.Comm)
		if r.hooks.cgroupID != nil {
			s.CgroupID = r.hooks.cgroupID(o.CgroupPath)
		}
		if s.CgroupID != 0 {
			paths[s.CgroupID] = o.CgroupPath
		}
	}
	return paths
}

// unheld is the reconciler's question to the builder.
func (s *Session) unheld(socks []lifecycle.Socket, miss []bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range socks {
		miss[i] = !s.in.b.Holds(&socks[i])
	}
}

// reconOwned applies what came with sockets whose owners the reconciler
// read: their cgroups' paths, as inputs before the sockets (in id order,
// so recordings do not depend on map order), and, for listeners, their
// owners to the probe, for the connections they will accept.
func (s *Session) reconOwned(m *reconMsg) error {
	ids := make([]uint64, 0, len(m.cgroups))
	for id := range m.cgroups {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if !s.in.knowsCgroup(id) {
			if err := s.cgroupInput(id, m.cgroups[id]); err != nil {
				return err
			}
		}
	}
	for i := range m.sockets {
		if ls := &m.sockets[i]; ls.State == probe.StateListen && ls.Pid != 0 {
			// As at start (session.go): ErrKeyExist and other failures
			// leave only the accepted connections' owner unknown.
			_ = s.probe.SeedListener(ls.NetNS, ls.Lport, ls.Pid, string(probe.TrimComm(&ls.Comm)), ls.CgroupID)
		}
	}
	return nil
}
