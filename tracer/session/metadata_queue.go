package session

import (
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// The metadata stage's queue: records that wait for their container's
// names or for their node-local peer's record, in the order they came
// (metadata.go has the stage and what it knows of containers).

// endKey is a connection end: its namespace and its endpoints.
type endKey struct {
	netns        uint32
	family       uint8
	laddr, raddr [16]byte
	lport, rport uint16
}

func endOf(r *lifecycle.Record) endKey {
	return endKey{r.NetNS, r.Family, r.Laddr, r.Raddr, r.Lport, r.Rport}
}

func (e endKey) swap() endKey {
	return endKey{e.netns, e.family, e.raddr, e.laddr, e.rport, e.lport}
}

// endInfo is the owner of a connection end that went out.
type endInfo struct {
	ks *keyState // its container's, nil for none
	at uint64
}

// attachment is what a record whose Closed waited was given, for its
// Finished (a Closed handed out at once attaches to the builder's record
// itself, which its Finished then carries).
type attachment struct {
	meta, peer *metadata.Meta
	done       bool // false while its Closed waits
}

// delayed is a record in the queue.
type delayed struct {
	closed  bool // Closed, else Finished
	follows bool // a Finished whose Closed went first: it takes its attachment
	queued  bool // a Closed that waited: its Finished finds its names in closed
	waits   bool // it waits itself (not only behind others)
	rec     lifecycle.Record

	ks *keyState // its container's, nil for none
	// peerWait: node-local, its peer's record not seen yet.
	peerWait  bool
	peer      endInfo
	peerFound bool

	deadline uint64
}

// endAt orders the ends for expiry.
type endAt struct {
	key endKey
	at  uint64
}

// Closed and Finished make the stage the builder's handler.
func (s *metaStage) Closed(r *lifecycle.Record) {
	if !s.on {
		s.h.Closed(r)
		return
	}
	s.handle(r, true)
}

func (s *metaStage) Finished(r *lifecycle.Record) {
	if !s.on {
		s.h.Finished(r)
		return
	}
	if a, ok := s.closed[r.ID]; ok {
		// Its Closed waited (or still waits): the same names, in order.
		if a.done && s.qlen() == 0 {
			delete(s.closed, r.ID)
			r.Meta, r.Peer = a.meta, a.peer
			s.h.Finished(r)
			return
		}
		s.push(delayed{follows: true, rec: *r, deadline: s.now})
		return
	}
	if r.End != 0 && r.Kind != lifecycle.KindEvicted {
		// Its Closed went out at once, attaching to the builder's record
		// itself: r carries its names.
		if s.qlen() == 0 {
			s.h.Finished(r)
			return
		}
		s.push(delayed{follows: true, rec: *r, deadline: s.now})
		return
	}
	s.handle(r, false)
}

// localPeer reports whether the other end of r is on this host, in its
// network namespace, and traced like r: a connection on loopback or to
// its own address that was established.
func localPeer(r *lifecycle.Record) bool {
	if r.Role == lifecycle.RoleListener {
		return false
	}
	established := false
	for _, sp := range r.SpanList() {
		established = established || sp.State == probe.StateEstablished
	}
	if !established {
		return false
	}
	ra := r.RemoteAddr()
	return ra.IsLoopback() || ra == r.LocalAddr()
}

func (s *metaStage) handle(r *lifecycle.Record, closed bool) {
	d := delayed{closed: closed, deadline: s.now + s.wait}
	if r.OwnerKnown() {
		d.ks = s.ofCgroup(r.CgroupID)
	}
	if d.ks.waits() && s.wait > 0 {
		d.waits = true
	}
	var end endKey
	if localPeer(r) {
		end = endOf(r)
		if p, ok := s.ends[end.swap()]; ok {
			// The other end went first.
			d.peer, d.peerFound = p, true
			delete(s.ends, end.swap())
			if p.ks.waits() && s.wait > 0 {
				d.waits = true
			}
		} else {
			s.addEnd(end, endInfo{ks: d.ks, at: s.now})
			if s.peers && s.wait > 0 {
				d.peerWait, d.waits = true, true
			}
		}
		// The other end waits for this one.
		if seq, ok := s.peerWait[end]; ok {
			delete(s.peerWait, end)
			if i := int(seq - s.queueSeq); i >= 0 && i < s.qlen() {
				o := &s.queue[s.qhead+i]
				o.peer, o.peerFound = endInfo{ks: d.ks, at: s.now}, true
				delete(s.ends, end.swap())
			}
		}
	}
	if !d.waits && s.qlen() == 0 {
		s.out(r, &d)
		return
	}
	if d.waits {
		s.stats.Delayed++
		if d.peerWait {
			s.peerWait[end.swap()] = s.queueSeq + uint64(s.qlen())
		}
	}
	d.rec = *r
	d.queued = true
	if closed {
		s.closed[r.ID] = attachment{}
	}
	s.push(d)
	s.release(false)
}

func (s *metaStage) push(d delayed) {
	if s.qlen() >= maxDelayed {
		s.pop(true)
	}
	if s.qhead > 0 && s.qhead == len(s.queue) {
		s.queue, s.qhead = s.queue[:0], 0 // empty: start over, in the same array
	} else if s.qhead > 1024 && 2*s.qhead > len(s.queue) {
		n := copy(s.queue, s.queue[s.qhead:])
		clear(s.queue[n:])
		s.queue, s.qhead = s.queue[:n], 0
	}
	s.queue = append(s.queue, d)
}

func (s *metaStage) qlen() int { return len(s.queue) - s.qhead }

func (s *metaStage) addEnd(e endKey, info endInfo) {
	for s.endOrder.len() > 0 {
		old := s.endOrder.peek()
		if s.endOrder.len() < maxEnds && old.at+endTTL > s.now {
			break
		}
		s.endOrder.pop()
		if cur, ok := s.ends[old.key]; ok && cur.at == old.at {
			delete(s.ends, old.key)
		}
	}
	s.ends[e] = info
	s.endOrder.push(endAt{e, info.at})
}

// ready reports whether a queued record has all it waits for.
func (s *metaStage) ready(d *delayed) bool {
	if d.follows {
		return true // its Closed, ahead of it, went out
	}
	if d.ks.waits() {
		return false
	}
	if d.peerWait && !d.peerFound {
		return false
	}
	return !(d.peerFound && d.peer.ks.waits())
}

// release hands out the records at the head of the queue that have what
// they wait for, or whose wait is over; force: all of them.
func (s *metaStage) release(force bool) {
	for s.qlen() > 0 {
		d := &s.queue[s.qhead]
		if !force && !s.ready(d) && s.now < d.deadline {
			return
		}
		s.pop(false)
	}
}

// pop hands out the head of the queue; early: to make room.
func (s *metaStage) pop(early bool) {
	d := &s.queue[s.qhead]
	if d.waits {
		switch {
		case s.ready(d):
			s.stats.Resolved++
		case early:
			s.stats.Dropped++
		default:
			s.stats.TimedOut++
		}
	}
	if d.peerWait && !d.peerFound {
		e := endOf(&d.rec).swap()
		if seq, ok := s.peerWait[e]; ok && seq == s.queueSeq {
			delete(s.peerWait, e)
		}
	}
	// Handed out from its slot (a copy would escape to the heap); the
	// handlers downstream never come back into the stage.
	s.out(&d.rec, d)
	s.queue[s.qhead] = delayed{}
	s.qhead++
	s.queueSeq++
}

// out attaches what is known and hands the record on.
func (s *metaStage) out(r *lifecycle.Record, d *delayed) {
	if d.follows {
		if a, ok := s.closed[r.ID]; ok {
			delete(s.closed, r.ID)
			r.Meta, r.Peer = a.meta, a.peer
		} // else its copy has the names its Closed attached
		s.h.Finished(r)
		return
	}
	r.Meta, r.Peer = nil, nil
	if d.ks != nil {
		r.Meta = d.ks.meta
	}
	if d.peerFound && d.peer.ks != nil {
		r.Peer = d.peer.ks.meta
	}
	if r.Peer == nil && len(s.ips) > 0 {
		// A pod in its own network namespace: its sandbox's IP.
		r.Peer = s.ips[r.RemoteAddr()]
	}
	if d.closed {
		if d.queued {
			s.closed[r.ID] = attachment{meta: r.Meta, peer: r.Peer, done: true}
		}
		s.h.Closed(r)
		return
	}
	s.h.Finished(r)
}

// fifo is a queue on a slice.
type fifo[T any] struct {
	items []T
	head  int
}

func (f *fifo[T]) len() int { return len(f.items) - f.head }
func (f *fifo[T]) push(v T) { f.items = append(f.items, v) }
func (f *fifo[T]) peek() T  { return f.items[f.head] }

func (f *fifo[T]) pop() T {
	v := f.items[f.head]
	var zero T
	f.items[f.head] = zero
	f.head++
	if f.head > 1024 && f.head*2 > len(f.items) {
		f.items = f.items[:copy(f.items, f.items[f.head:])]
		f.head = 0
	}
	return v
}
