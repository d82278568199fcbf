package session

import (
	"net/netip"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
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

func (s *metaStage) statsNow() MetaStats {
	st := s.stats
	st.Containers = len(s.keys)
	st.PodIPs = len(s.ips)
	return st
}
