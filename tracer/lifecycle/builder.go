package lifecycle

import (
	"crypto/rand"
	"encoding/binary"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// The Builder and its inputs. The work is split by concern: the table of
// records (table.go), the transition state machine (transition.go),
// snapshot seeding (seed.go), close classification (close.go), TIME_WAIT
// (timewait.go) and the sock_diag observations (socket.go).

// Handler receives records as they complete. The pointer is valid only
// during the call.
type Handler interface {
	// Closed: the connection reached CLOSE; all but the end of its
	// TIME_WAIT is known.
	Closed(r *Record)
	// Finished: the record is complete and leaves the builder: after
	// TIME_WAIT, right after Closed when there is none, on eviction and
	// on Flush.
	Finished(r *Record)
}

// Handlers hands every record to each of its handlers in turn, in order;
// an empty Handlers drops them.
type Handlers []Handler

// Closed calls each handler's Closed.
func (hs Handlers) Closed(r *Record) {
	for _, h := range hs {
		h.Closed(r)
	}
}

// Finished calls each handler's Finished.
func (hs Handlers) Finished(r *Record) {
	for _, h := range hs {
		h.Finished(r)
	}
}

// Stats are the builder's own counters.
type Stats struct {
	Events      uint64
	Records     uint64 // records started
	Evictions   [EvictReasons]uint64
	Anomalies   [anomalyKinds]uint64
	LateResets  uint64 // resets for a record already classified
	Unmatched   uint64 // non-state events for unknown connections
	SeededStart uint64 // seeded records their first event joined
	// Seeded: records opened from a sock_diag dump (seed.go); less those a
	// socket born during the dump replaced (SeedsReplaced).
	Seeded        uint64
	SeedsReplaced uint64
	// Rejoined: events with a new connection id that joined an open
	// record by its endpoints (the BPF program's map had evicted it).
	Rejoined uint64
	// Reconciliations: complete reconciliation dumps of a namespace;
	// Reconciled counts their repairs by ReconcileAction.
	Reconciliations uint64
	Reconciled      [ReconcileActions]uint64
	// TwinChildren: accepted sockets the kernel created and destroyed at
	// once because another CPU created the same connection's socket first
	// (two segments completing one handshake in parallel). Not records.
	TwinChildren uint64
}

// Eviction reasons.
const (
	EvictCap = iota
	EvictHandshakeTimeout
	EvictReasons // how many there are
)

// EvictReasonName names an eviction reason.
func EvictReasonName(i int) string {
	return [...]string{"cap", "handshake_timeout"}[i]
}

const anomalyKinds = 4

// AnomalyKinds is how many anomaly kinds Stats counts.
const AnomalyKinds = anomalyKinds

// Builder assembles records. It is not safe for concurrent use.
type Builder struct {
	cfg Config
	h   Handler

	// the records (table.go): chunks, the lowest that may have room, the
	// empty one kept (-1: none), how many were dropped; live records
	chunks  []chunk
	lowFree int
	spare   int
	dropped uint64
	live    int
	// what shrink.go re-created and counted
	peaks       mapPeaks
	droppedSeen uint64
	released    uint64
	byID        map[key64]int32 // connection id -> record
	// LRU of open records: head is the most recently active.
	head, tail int32
	open       int

	held      []int32            // closed, waiting out ResetHold, in close order
	timeWait  map[tupleKey]int32 // records in TIME_WAIT
	passive   map[tupleKey]int32 // registered accepted connections no longer open (tupleindex.go)
	handshake map[int32]struct{} // records in SYN_SENT or SYN_RECV

	byTuple   map[key64]int32 // open records by their endpoints' hash (tupleindex.go)
	hashSeed  uint64          // tupleHash's
	seedSeq   uint64
	unjoinedN int                  // seeded records no event joined yet
	recon     map[uint32]*reconRun // reconciliation dumps under way (reconcile.go)
	listening map[listenKey]bool   // ports the snapshot saw listeners on
	// orphans in FIN_WAIT2 (orphan.go), by tuple and by flow across
	// namespaces (-1: in more than one); namespaces' tcp_fin_timeout
	orphans     map[tupleKey]int32
	orphanFlows map[flowKey]int32
	finTimeout  map[uint32]time.Duration
	twPolled    map[uint32]uint64      // netns -> time of its last complete TIME_WAIT dump
	twGone      map[tupleKey]twGoneEnd // fentry's ends not yet applied (timewait.go)
	cgroups     map[uint64]*cgroupInfo // shared by the slots that carry one
	lost        uint64
	lostAt      uint64 // b.now when lost last grew
	now         uint64
	lastSweep   uint64

	states [probe.MaxState + 1]int
	stats  Stats

	// what slots keep outside themselves (slot.go, owners.go)
	owners    []ownerEntry // [0]: none
	ownerOf   map[ownerKey]int32
	ownerFree []int32
	lastOwner int32 // the owner setOwner set last
	exits     map[int32]*[MaxSpans]uint64
	closings  closingTable
	rares     sideTable[rare]
	// closing chunks dropped that Released counted
	closingsSeen, raresSeen uint64
	attached                map[int32][2]*metadata.Meta

	scratch, order []int32 // reused by inOrder
	out            Record  // a record handed to the handler (slot.go)
	outFor         int32   // the record out holds after its Closed, -1: none (finishClosed)
	looked         *Record // Lookup's last copy, of record lookedAt
	lookedAt       int32
}

// NewBuilder returns a builder that hands records to h.
func NewBuilder(cfg Config, h Handler) *Builder {
	cfg.setDefaults()
	return &Builder{
		cfg: cfg, h: h,
		byID:        map[key64]int32{},
		head:        -1,
		tail:        -1,
		spare:       -1,
		outFor:      -1,
		timeWait:    map[tupleKey]int32{},
		passive:     map[tupleKey]int32{},
		handshake:   map[int32]struct{}{},
		byTuple:     map[key64]int32{},
		hashSeed:    hashSeed(),
		recon:       map[uint32]*reconRun{},
		listening:   map[listenKey]bool{},
		orphans:     map[tupleKey]int32{},
		orphanFlows: map[flowKey]int32{},
		finTimeout:  map[uint32]time.Duration{},
		twPolled:    map[uint32]uint64{},
		twGone:      map[tupleKey]twGoneEnd{},
		cgroups:     map[uint64]*cgroupInfo{},
		owners:      make([]ownerEntry, 1),
		ownerOf:     map[ownerKey]int32{},
		exits:       map[int32]*[MaxSpans]uint64{},
		attached:    map[int32][2]*metadata.Meta{},
	}
}

// Stats returns the builder's counters.
func (b *Builder) Stats() Stats { return b.stats }

// Tracked is how many connections the builder knows now: the records it
// holds, those seeded from time-wait sockets included.
func (b *Builder) Tracked() int { return b.live }

// records is how many records the builder holds.
func (b *Builder) records() int { return b.live }

// StateCount is how many tracked connections are in a state now, as ss
// counts them: time-wait sockets by their substate. TIME_WAIT counts
// the records in it (reconstructed, exact, or seeded from a dump);
// FIN_WAIT2 includes the orphans handed to time-wait sockets.
func (b *Builder) StateCount(s probe.State) int {
	switch {
	case s == probe.StateTimeWait:
		return len(b.timeWait)
	case s > probe.MaxState:
		return 0
	}
	return b.states[s]
}

// Cgroup tells the builder a cgroup id's path and the container that
// path names ("runtime:id", "" for none): the records of the cgroup's
// connections carry both. Naming containers is the cgroups package's job;
// the builder is told the result.
func (b *Builder) Cgroup(id uint64, path, container string) {
	// A new entry: the slots annotated with the old one keep its names.
	b.cgroups[id] = &cgroupInfo{path, container}
}

type cgroupInfo struct{ path, container string }

// KnowsCgroup reports whether the cgroup's path was given.
func (b *Builder) KnowsCgroup(id uint64) bool {
	_, ok := b.cgroups[id]
	return ok
}

// Lost tells the builder the tracer's cumulative lost-event count.
func (b *Builder) Lost(total uint64) {
	if total > b.lost {
		b.lost, b.lostAt = total, b.now
	}
}

// Event feeds one kernel event.
func (b *Builder) Event(e *probe.Event) {
	b.stats.Events++
	b.advance(e.TsNs)
	switch probe.EventType(e.Type) {
	case probe.TypeState:
		b.transition(e)
	case probe.TypeResetSent, probe.TypeResetReceived, probe.TypeSynRetransmit:
		b.sideEvent(e)
	case probe.TypeTimeWaitEnd:
		b.twSockEnded(e)
	}
}

// advance moves the builder's clock: event timestamps and ticks both do.
func (b *Builder) advance(now uint64) {
	if now <= b.now {
		return
	}
	b.now = now
	done := 0
	for done < len(b.held) {
		i := b.held[done]
		if b.cl(b.rec(i)).heldUntil > now {
			break
		}
		done++
		b.closeRecord(i)
	}
	if done > 0 {
		// Keep the slice's start, so appends reuse its array instead of
		// growing a new one as the window slides.
		b.held = b.held[:copy(b.held, b.held[done:])]
	}
}

// Tick advances the clock without an event: closes held records, ends
// TIME_WAIT that can only be assumed, and evicts stuck handshakes.
func (b *Builder) Tick(now uint64) {
	b.advance(now)
	if now < b.lastSweep+1_000_000_000 {
		return
	}
	b.lastSweep = now
	b.forgetTWGone(now)
	b.evictStuckHandshakes(now)
	b.assumeOrphanEnds(now)
	b.assumeTimeWaitEnds(now)
	b.shrink()
}

// Flush emits every record as it stands, for a tracer that stops: held
// records are classified, open ones and those in TIME_WAIT are emitted
// with their state.
func (b *Builder) Flush() {
	for _, i := range b.held {
		b.closeRecord(i)
	}
	b.held = b.held[:0]
	for _, i := range b.inOrder(b.timeWaitList()) {
		r := b.rec(i)
		delete(b.timeWait, recordKey(r))
		b.finish(i)
	}
	for b.head >= 0 {
		i := b.head
		r := b.rec(i)
		b.lruRemove(i)
		b.unindex(i)
		b.uncount(i, r)
		b.annotate(r)
		b.unverified(r)
		b.finish(i)
	}
}

// SetExactTimeWait says whether the kernel reports TIME_WAIT itself; set
// before the first event.
func (b *Builder) SetExactTimeWait(on bool) { b.cfg.ExactTimeWait = on }

// hashSeed is a random seed for tupleHash.
func hashSeed() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return binary.LittleEndian.Uint64(b[:])
}
