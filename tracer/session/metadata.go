package session

import (
	"net/netip"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

// The metadata stage sits between the builder and the handlers: it
// attaches to each record the metadata of its owner's container and of
// its peer (lifecycle.Record.Meta, .Peer), once, where the record is
// handed out, never on the per-event path.
//
// It decides from its inputs alone, so a replay attaches what the live
// run attached: which containers are named comes from KindMeta inputs
// (the live session writes the runtime's answers into the input stream
// where it learns them: live.go), and time from the ticks. A record whose
// container has been asked about but not answered yet, or whose
// node-local peer's record has not come yet, waits in a queue, at most
// the wait of the MetaEnabled input in input time; records leave the
// queue in the order they came, so one that waits holds back those
// behind it, never the event loop.

// Defaults and limits of the session's metadata options.
const (
	DefaultMetadataWait = time.Second
	MaxMetadataWait     = 10 * time.Second
	// DefaultMetadataEntries bounds the containers the stage holds, as
	// the resolver's cache (metadata.Config.MaxEntries).
	DefaultMetadataEntries = 4096
)

const (
	// maxDelayed bounds the queue of records waiting (about 500 bytes
	// each); beyond it the oldest goes out with what is known, counted.
	maxDelayed = 8192
	// metaRetry spaces the re-asks for a container the runtime did not
	// name: after an outage names come back, at this pace.
	metaRetry = uint64(5 * time.Second)
	// Ends of node-local connections kept for the other end's record to
	// find: the two ends can close minutes apart (a half-close).
	maxEnds = 16384
	endTTL  = uint64(5 * time.Minute)
)

// MetaStats count what the metadata stage did.
type MetaStats struct {
	// Delayed: records that waited for their container's metadata or
	// their peer's record. Of those, Resolved got what they waited for,
	// TimedOut went out at the wait limit with what was known, Dropped
	// went out early because maxDelayed records waited.
	Delayed, Resolved, TimedOut, Dropped uint64
	Containers                           int // containers the stage holds (named, unnamed, asked)
	PodIPs                               int // pod sandbox IPs of this node it knows
}

// keyState is what the stage knows of one container.
type keyState struct {
	key     metadata.Key
	evicted bool           // no longer in keys: look it up again
	meta    *metadata.Meta // once named; never changed after
	bare    *metadata.Meta // the runtime and id alone, for events while not named
	pending bool           // asked the first time, not answered: its records wait
	retryAt uint64         // not named: a record of it asks again from then on
}

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

type metaStage struct {
	h lifecycle.Handler

	on    bool   // MetaEnabled seen
	wait  uint64 // ns a record may wait
	peers bool   // node-local records wait for the other end
	// ask, in a live session, asks the runtime about a container; the
	// answer comes back as a KindMeta input. nil on replay: the answers
	// are in the recording.
	ask     func(k metadata.Key, first bool)
	maxKeys int

	now        uint64
	cgroupKeys map[uint64]*keyState // a cgroup's container
	keys       map[metadata.Key]*keyState
	keyOrder   fifo[metadata.Key]
	ips        map[netip.Addr]*metadata.Meta

	// queue[qhead:] waits, queue[qhead] first; queueSeq numbers it.
	queue    []delayed
	qhead    int
	queueSeq uint64
	peerWait map[endKey]uint64
	ends     map[endKey]endInfo
	endOrder fifo[endAt]
	closed   map[uint64]attachment

	stats MetaStats
}

// endAt orders the ends for expiry.
type endAt struct {
	key endKey
	at  uint64
}

func newMetaStage(h lifecycle.Handler) *metaStage {
	return &metaStage{h: h, maxKeys: DefaultMetadataEntries,
		cgroupKeys: map[uint64]*keyState{}, keys: map[metadata.Key]*keyState{}, ips: map[netip.Addr]*metadata.Meta{},
		peerWait: map[endKey]uint64{}, ends: map[endKey]endInfo{}, closed: map[uint64]attachment{}}
}

// cgroup learns a cgroup's container; with metadata on, a container seen
// the first time is asked about at once, before its records close.
func (s *metaStage) cgroup(id uint64, k cgroups.Container) {
	if s.on {
		s.cgroupKeys[id] = s.state(k)
		return
	}
	s.cgroupKeys[id] = &keyState{key: k, evicted: true} // looked up once on
}

// ofCgroup is the state of a cgroup's container, nil for none; a state
// evicted since is looked up (and asked about) again.
func (s *metaStage) ofCgroup(id uint64) *keyState {
	ks := s.cgroupKeys[id]
	if ks == nil {
		return nil
	}
	if ks.evicted {
		ks = s.state(ks.key)
		s.cgroupKeys[id] = ks
		return ks
	}
	s.retry(ks)
	return ks
}

// input applies a KindMeta input.
func (s *metaStage) input(m *recording.Meta) {
	switch m.Op {
	case recording.MetaEnabled:
		s.on, s.wait, s.peers = true, uint64(m.Wait), m.Peers
	case recording.MetaContainer:
		k := metadata.Key{Runtime: m.Meta.Runtime, ID: m.Meta.ID}
		ks := s.keys[k]
		if ks == nil {
			ks = s.add(k)
		}
		ks.pending = false
		if m.Known {
			meta := m.Meta
			ks.meta = &meta
		} else if ks.meta == nil {
			ks.retryAt = s.now + metaRetry
		}
	case recording.MetaPodIP:
		meta := m.Meta
		s.ips[meta.Pod.IP] = &meta
	case recording.MetaPodIPGone:
		delete(s.ips, m.Meta.Pod.IP)
	}
	s.release(false)
}

// tick moves the stage's clock: records whose wait is over go out.
func (s *metaStage) tick(now uint64) {
	if now > s.now {
		s.now = now
	}
	if s.qlen() > 0 {
		s.release(false)
	}
}

// end hands out every record still waiting: the session stops.
func (s *metaStage) end() { s.release(true) }

// metaOf is what the stage knows of a cgroup's container now, for
// events: its metadata once named, its runtime and id alone before; nil
// for a cgroup of no container.
func (s *metaStage) metaOf(cgroupID uint64) *metadata.Meta {
	ks := s.cgroupKeys[cgroupID]
	if ks == nil || !s.on {
		return nil
	}
	if ks.meta != nil {
		return ks.meta
	}
	if ks.bare == nil {
		ks.bare = &metadata.Meta{Runtime: ks.key.Runtime, ID: ks.key.ID}
	}
	return ks.bare
}

// waiting reports whether a record waits for an answer of the runtime.
func (s *metaStage) waiting() bool {
	for i := s.qhead; i < len(s.queue); i++ {
		d := &s.queue[i]
		if d.ks.waits() || d.peerFound && d.peer.ks.waits() {
			return true
		}
	}
	return false
}

// waits reports whether records of the container wait for its answer.
func (ks *keyState) waits() bool { return ks != nil && ks.pending && !ks.evicted }

// state is a container's state, asked about when new, asked again when
// unnamed and due.
func (s *metaStage) state(k metadata.Key) *keyState {
	ks := s.keys[k]
	if ks == nil {
		ks = s.add(k)
		ks.pending = true
		if s.ask != nil {
			s.ask(k, true)
		}
		return ks
	}
	s.retry(ks)
	return ks
}

// retry asks again about a container not named, when due.
func (s *metaStage) retry(ks *keyState) {
	if ks.meta == nil && !ks.pending && s.now >= ks.retryAt {
		ks.retryAt = s.now + metaRetry
		if s.ask != nil {
			s.ask(ks.key, false)
		}
	}
}

// add makes room and adds a container, oldest out first (never one
// asked about and not answered): the same inputs evict the same ones.
func (s *metaStage) add(k metadata.Key) *keyState {
	for n := s.keyOrder.len(); len(s.keys) >= s.maxKeys && n > 0; n-- {
		old := s.keyOrder.pop()
		ks := s.keys[old]
		if ks != nil && ks.pending {
			s.keyOrder.push(old)
			continue
		}
		if ks != nil {
			ks.evicted = true
		}
		delete(s.keys, old)
	}
	ks := &keyState{key: k}
	s.keys[k] = ks
	s.keyOrder.push(k)
	return ks
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

func (s *metaStage) statsNow() MetaStats {
	st := s.stats
	st.Containers = len(s.keys)
	st.PodIPs = len(s.ips)
	return st
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
