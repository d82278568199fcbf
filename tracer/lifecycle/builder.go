package lifecycle

import (
	"cmp"
	"slices"
	"syscall"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// How long past the expected end of TIME_WAIT to wait for its
// observation before assuming it.
const timeWaitGrace = 2_000_000_000

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

// Stats are the builder's own counters.
type Stats struct {
	Events      uint64
	Records     uint64 // records started
	Evictions   [EvictReasons]uint64
	Anomalies   [anomalyKinds]uint64
	LateResets  uint64 // resets for a record already classified
	Unmatched   uint64 // non-state events for unknown connections
	SeededStart uint64 // partial records matched to the start snapshot
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

// tupleKey identifies a connection by its endpoints.
type tupleKey struct {
	netns        uint32
	family       uint8
	laddr, raddr [16]byte
	lport, rport uint16
}

func eventKey(e *probe.Event) tupleKey {
	return tupleKey{e.Netns, e.Family, e.Saddr, e.Daddr, e.Sport, e.Dport}
}

func recordKey(r *Record) tupleKey {
	return tupleKey{r.NetNS, r.Family, r.Laddr, r.Raddr, r.Lport, r.Rport}
}

// seed is what the start snapshot knew of a socket.
type seed struct {
	state    probe.State
	pid      uint32
	comm     [16]byte
	cgroupID uint64
	hasOwner bool
}

// Builder assembles records. It is not safe for concurrent use.
type Builder struct {
	cfg Config
	h   Handler

	slab []Record
	free []int32
	byID map[uint64]int32
	// LRU of open records: head is the most recently active.
	head, tail int32
	open       int

	held      []int32            // closed, waiting out ResetHold, in close order
	timeWait  map[tupleKey]int32 // records in TIME_WAIT
	passive   map[tupleKey]int32 // open accepted connections, to tell a twin
	handshake map[int32]struct{} // records in SYN_SENT or SYN_RECV

	seeds     map[tupleKey]seed
	listening map[listenKey]bool  // ports the snapshot saw listeners on
	preTW     map[tupleKey]uint64 // TIME_WAIT sockets from before the start: expected end
	twPolled  map[uint32]uint64   // netns -> time of its last complete TIME_WAIT dump
	cgroups   map[uint64]string
	lost      uint64
	now       uint64
	lastSweep uint64

	states [probe.MaxState + 1]int
	stats  Stats

	scratch, order []int32 // reused by inOrder
}

// NewBuilder returns a builder that hands records to h.
func NewBuilder(cfg Config, h Handler) *Builder {
	cfg.setDefaults()
	return &Builder{
		cfg: cfg, h: h,
		byID:      map[uint64]int32{},
		head:      -1,
		tail:      -1,
		timeWait:  map[tupleKey]int32{},
		passive:   map[tupleKey]int32{},
		handshake: map[int32]struct{}{},
		seeds:     map[tupleKey]seed{},
		listening: map[listenKey]bool{},
		preTW:     map[tupleKey]uint64{},
		twPolled:  map[uint32]uint64{},
		cgroups:   map[uint64]string{},
	}
}

// Stats returns the builder's counters.
func (b *Builder) Stats() Stats { return b.stats }

// Tracked is how many records the builder holds.
func (b *Builder) Tracked() int { return len(b.slab) - len(b.free) }

// StateCount is how many tracked connections are in a state now.
// TIME_WAIT counts reconstructed ones and those seen at start.
func (b *Builder) StateCount(s probe.State) int {
	if s == probe.StateTimeWait {
		return len(b.timeWait) + len(b.preTW)
	}
	if s > probe.MaxState {
		return 0
	}
	return b.states[s]
}

// TimeWaitNetNS lists the network namespaces with records in TIME_WAIT
// whose end sock_diag should observe.
func (b *Builder) TimeWaitNetNS(dst []uint32) []uint32 {
	seen := map[uint32]bool{}
	for k := range b.timeWait {
		if !seen[k.netns] {
			seen[k.netns] = true
			dst = append(dst, k.netns)
		}
	}
	return dst
}

// Cgroup tells the builder a cgroup id's path.
func (b *Builder) Cgroup(id uint64, path string) { b.cgroups[id] = path }

// KnowsCgroup reports whether the cgroup's path was given.
func (b *Builder) KnowsCgroup(id uint64) bool {
	_, ok := b.cgroups[id]
	return ok
}

// Lost tells the builder the tracer's cumulative lost-event count.
func (b *Builder) Lost(total uint64) {
	if total > b.lost {
		b.lost = total
	}
}

func (b *Builder) alloc() int32 {
	if n := len(b.free); n > 0 {
		i := b.free[n-1]
		b.free = b.free[:n-1]
		b.slab[i] = Record{}
		return i
	}
	b.slab = append(b.slab, Record{})
	return int32(len(b.slab) - 1)
}

func (b *Builder) release(i int32) {
	r := &b.slab[i]
	delete(b.byID, r.ID)
	if k := recordKey(r); r.Role == RolePassive && b.passive[k] == i {
		delete(b.passive, k)
	}
	b.free = append(b.free, i)
}

// LRU of open records.
func (b *Builder) lruPush(i int32) {
	r := &b.slab[i]
	r.prev, r.next = -1, b.head
	if b.head >= 0 {
		b.slab[b.head].prev = i
	}
	b.head = i
	if b.tail < 0 {
		b.tail = i
	}
	b.open++
}

func (b *Builder) lruRemove(i int32) {
	r := &b.slab[i]
	if r.prev >= 0 {
		b.slab[r.prev].next = r.next
	} else {
		b.head = r.next
	}
	if r.next >= 0 {
		b.slab[r.next].prev = r.prev
	} else {
		b.tail = r.prev
	}
	r.prev, r.next = -1, -1
	b.open--
}

func (b *Builder) touch(i int32) {
	if b.head != i {
		b.lruRemove(i)
		b.lruPush(i)
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
		b.timeWaitEnded(eventKey(e), e.TsNs, TWExact)
	}
}

func (b *Builder) transition(e *probe.Event) {
	old, nw := e.OldState(), e.NewState()
	i, ok := b.byID[e.ConnId]
	var r *Record
	if !ok {
		i = b.start(e)
		r = &b.slab[i]
	} else {
		r = &b.slab[i]
		if r.End != 0 {
			// Events after CLOSE: the kernel reused nothing, so this is a
			// new life the id cannot have; count it.
			b.stats.Unmatched++
			return
		}
		if r.State != old {
			b.flag(r, AnomalyStateMismatch)
		}
		b.touch(i)
	}
	if !validTransition(old, nw) {
		b.flag(r, AnomalyInvalidTransition)
	}

	b.setState(i, r, nw, e.TsNs)
	b.updateOwner(r, e)
	r.TxBytes, r.RxBytes = e.TxBytes(), e.RxBytes()
	if r.Role == RoleActive && r.Anomalies&AnomalyPartial != 0 && e.Flags&probe.FlagSynAcked == 0 && r.TxBytes > 0 {
		// The kernel flags the SYN in bytes_acked for connections it saw
		// open; for one found open, the role came from the snapshot.
		r.TxBytes--
	}
	r.SrttUs, r.Retransmits, r.SegsIn, r.SegsOut = e.SrttUs, e.TotalRetrans, e.SegsIn, e.SegsOut

	switch nw {
	case probe.StateSynSent:
		if old == probe.StateClose {
			r.Role = RoleActive
			// connect() from the endpoints of a TIME_WAIT takes it over.
			if tw, ok := b.timeWait[recordKey(r)]; ok && tw != i {
				b.finishTimeWait(tw, e.TsNs, TWReused)
			}
		}
	case probe.StateSynRecv:
		if old == probe.StateListen {
			r.Role = RolePassive
			if _, ok := b.passive[recordKey(r)]; !ok {
				b.passive[recordKey(r)] = i
			}
		}
	case probe.StateListen:
		r.Role = RoleListener
	case probe.StateEstablished:
		r.established = true
		r.HandshakeRTTUs = e.SrttUs
		if old == probe.StateSynRecv && r.Role == RolePassive {
			// An accepted socket starts with its request's SYN-ACK
			// retransmits as its retransmit count.
			r.SynRetransmits = e.TotalRetrans
		}
		if n := r.NSpan; n >= 2 {
			hs := &r.Spans[n-2]
			if (hs.State == probe.StateSynSent || hs.State == probe.StateSynRecv) && hs.Enter != 0 {
				r.HandshakeNs = e.TsNs - hs.Enter
			}
		}
	case probe.StateFinWait1:
		if !r.sawCloseWait {
			r.sawFinWait1 = true
		}
	case probe.StateCloseWait:
		if !r.sawFinWait1 {
			r.sawCloseWait = true
		}
	case probe.StateClosing:
		r.sawClosing = true
	case probe.StateClose:
		r.End = e.TsNs
		r.SkErr = e.SkErr
		if e.Flags&probe.FlagTimeWait != 0 {
			r.TimeWait = TWPending
			r.twFinWait2 = e.Flags&probe.FlagTWFinWait2 != 0
		}
		b.lruRemove(i)
		r.heldUntil = e.TsNs + uint64(b.cfg.ResetHold)
		b.held = append(b.held, i)
	}
}

// start opens a record for a connection's first event.
func (b *Builder) start(e *probe.Event) int32 {
	if b.open >= b.cfg.MaxTracked || b.Tracked() >= b.cfg.MaxTracked {
		b.evictOldest()
	}
	i := b.alloc()
	r := &b.slab[i]
	r.ID = e.ConnId
	r.Family, r.Laddr, r.Raddr, r.Lport, r.Rport, r.NetNS = e.Family, e.Saddr, e.Daddr, e.Sport, e.Dport, e.Netns
	r.Start = e.TsNs
	r.lostAtStart = b.lost
	r.prev, r.next = -1, -1
	b.byID[r.ID] = i
	b.lruPush(i)
	b.stats.Records++

	old := e.OldState()
	startsLife := (old == probe.StateClose && (e.NewState() == probe.StateSynSent || e.NewState() == probe.StateListen)) ||
		(old == probe.StateListen && e.NewState() == probe.StateSynRecv)
	if startsLife && !e.Partial() {
		r.State = old
		return i
	}
	// Midway: the state it was in began before anything was seen.
	b.flag(r, AnomalyPartial)
	r.State = old
	r.Spans[0] = Span{State: old}
	r.NSpan = 1
	switch old {
	case probe.StateEstablished, probe.StateFinWait1, probe.StateFinWait2, probe.StateCloseWait,
		probe.StateLastAck, probe.StateClosing:
		r.established = true
	}
	if old != probe.StateClose {
		b.count(i, r)
	}
	if s, ok := b.seeds[eventKey(e)]; ok {
		r.Seeded = true
		b.stats.SeededStart++
		if s.hasOwner {
			r.Pid, r.Comm, r.CgroupID, r.Owner = s.pid, s.comm, s.cgroupID, probe.OwnerTask
		}
		if s.state == probe.StateListen {
			r.Role = RoleListener
		}
		delete(b.seeds, eventKey(e))
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
	return i
}

type listenKey struct {
	netns uint32
	port  uint16
}

// setState closes the current span and opens one for the new state.
func (b *Builder) setState(i int32, r *Record, s probe.State, ts uint64) {
	if r.NSpan > 0 {
		r.Spans[r.NSpan-1].Exit = ts
	}
	b.uncount(i, r)
	r.State = s
	if s == probe.StateClose {
		return
	}
	b.count(i, r)
	if r.NSpan < MaxSpans {
		r.Spans[r.NSpan] = Span{State: s, Enter: ts}
		r.NSpan++
	} else {
		// More states than a connection can pass through: keep the last.
		r.Spans[MaxSpans-1] = Span{State: s, Enter: ts}
		b.flag(r, AnomalyInvalidTransition)
	}
}

// count and uncount keep the per-state gauge and the handshake set.
func (b *Builder) count(i int32, r *Record) {
	r.counted = true
	b.states[r.State]++
	if r.State == probe.StateSynSent || r.State == probe.StateSynRecv {
		b.handshake[i] = struct{}{}
	}
}

func (b *Builder) uncount(i int32, r *Record) {
	if !r.counted {
		return
	}
	r.counted = false
	b.states[r.State]--
	delete(b.handshake, i)
}

// updateOwner takes the event's owner when it knows better.
func (b *Builder) updateOwner(r *Record, e *probe.Event) {
	src := e.OwnerSource()
	if src == probe.OwnerUnknown {
		return
	}
	better := r.Owner == probe.OwnerUnknown ||
		(r.Owner == probe.OwnerListener && src != probe.OwnerListener) ||
		src == probe.OwnerTask
	if !better {
		return
	}
	r.Pid, r.Comm, r.CgroupID = e.Pid, e.Comm, e.CgroupId
	r.Owner = src
	if src == probe.OwnerCarried {
		r.Owner = probe.OwnerTask
	}
}

func (b *Builder) flag(r *Record, a Anomaly) {
	if r.Anomalies&a == 0 {
		r.Anomalies |= a
		for k := 0; k < anomalyKinds; k++ {
			if a == 1<<k {
				b.stats.Anomalies[k]++
			}
		}
	}
}

// sideEvent attaches a reset or a SYN retransmit to its record, open or
// waiting out its reset hold.
func (b *Builder) sideEvent(e *probe.Event) {
	i, ok := b.byID[e.ConnId]
	if !ok {
		b.stats.Unmatched++
		return
	}
	r := &b.slab[i]
	if r.End != 0 && r.heldUntil == 0 {
		b.stats.LateResets++
		return
	}
	switch probe.EventType(e.Type) {
	case probe.TypeResetSent:
		r.resetSent = true
	case probe.TypeResetReceived:
		r.resetReceived = true
	case probe.TypeSynRetransmit:
		r.SynRetransmits++
	}
	b.updateOwner(r, e)
}

// validTransition follows RFC 9293's state diagram as Linux reports it:
// TIME_WAIT shows as CLOSE, and every synchronized state may abort to
// CLOSE on a RST or a timeout.
func validTransition(from, to probe.State) bool {
	if to == probe.StateClose {
		return from != probe.StateClose
	}
	switch from {
	case probe.StateClose:
		return to == probe.StateSynSent || to == probe.StateListen
	case probe.StateListen:
		return to == probe.StateSynRecv
	case probe.StateSynSent:
		return to == probe.StateEstablished || to == probe.StateSynRecv
	case probe.StateSynRecv:
		return to == probe.StateEstablished || to == probe.StateFinWait1
	case probe.StateEstablished:
		return to == probe.StateFinWait1 || to == probe.StateCloseWait
	case probe.StateFinWait1:
		return to == probe.StateFinWait2 || to == probe.StateClosing
	case probe.StateCloseWait:
		return to == probe.StateLastAck
	}
	return false
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
		if b.slab[i].heldUntil > now {
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
	for _, i := range b.inOrder(b.handshakeList()) {
		r := &b.slab[i]
		since := r.Start
		if r.NSpan > 0 && r.Spans[r.NSpan-1].Enter != 0 {
			since = r.Spans[r.NSpan-1].Enter
		}
		if now > since+uint64(b.cfg.HandshakeTimeout) {
			b.evict(i, EvictHandshakeTimeout)
		}
	}
	for _, i := range b.inOrder(b.timeWaitList()) {
		r := &b.slab[i]
		k := recordKey(r)
		if now < r.TimeWaitEnter+TimeWaitLen+timeWaitGrace {
			continue
		}
		if polled, ok := b.twPolled[k.netns]; ok && polled > r.TimeWaitEnter && !b.cfg.ExactTimeWait {
			continue // sock_diag sees this netns; its dumps decide
		}
		b.timeWaitEnded(k, r.TimeWaitEnter+TimeWaitLen, TWAssumed)
	}
	for k, end := range b.preTW {
		if now > end+timeWaitGrace {
			delete(b.preTW, k)
		}
	}
}

// closeRecord classifies a closed record once its reset hold is over.
func (b *Builder) closeRecord(i int32) {
	r := &b.slab[i]
	r.heldUntil = 0
	k := recordKey(r)
	if r.Role == RolePassive {
		if j, ok := b.passive[k]; ok && j == i {
			delete(b.passive, k)
		} else if ok && !r.established && !r.resetSent && !r.resetReceived && r.SkErr == 0 {
			// Its twin holds the connection: the kernel lost a race
			// creating this socket and closed it at once.
			b.stats.TwinChildren++
			b.release(i)
			return
		}
	}
	b.classify(r)
	if r.TimeWait == TWNone && b.reconstructTimeWait(r) {
		r.TimeWait = TWPending
	}
	if r.TimeWait == TWPending {
		r.TimeWaitEnter = r.End
		if r.NSpan < MaxSpans {
			r.Spans[r.NSpan] = Span{State: probe.StateTimeWait, Enter: r.End}
			r.NSpan++
		}
		if old, ok := b.timeWait[recordKey(r)]; ok {
			// A new connection reused the tuple while the old one was
			// thought in TIME_WAIT: the old one ended by then.
			b.finishTimeWait(old, r.End, TWReused)
		}
		b.timeWait[recordKey(r)] = i
	}
	b.annotate(r)
	b.h.Closed(r)
	if r.TimeWait != TWPending {
		b.finish(i)
	}
}

// classify decides the initiator and the kind of close.
func (b *Builder) classify(r *Record) {
	err := syscall.Errno(r.SkErr)
	switch {
	case r.Role == RoleListener:
		r.Kind = KindListenerClosed
		return
	case r.sawClosing:
		r.Initiator = InitiatorBoth
	case r.sawFinWait1:
		r.Initiator = InitiatorLocal
	case r.sawCloseWait:
		r.Initiator = InitiatorRemote
	case r.resetSent:
		r.Initiator = InitiatorLocal
	case r.resetReceived || err == syscall.ECONNRESET || err == syscall.EPIPE || err == syscall.ECONNREFUSED:
		r.Initiator = InitiatorRemote
	case err == syscall.ETIMEDOUT:
		r.Initiator = InitiatorLocal
	}

	if !r.established {
		switch {
		case r.Role == RoleActive && (err == syscall.ECONNREFUSED || r.resetReceived):
			r.Kind = KindRefused
		case err == syscall.ETIMEDOUT:
			r.Kind = KindConnectTimeout
		case r.resetReceived:
			r.Kind = KindResetReceived
		default:
			r.Kind = KindAbortedHandshake
		}
		if r.Initiator == InitiatorUnknown {
			r.Initiator = InitiatorLocal
		}
		return
	}
	switch {
	case r.resetReceived || err == syscall.ECONNRESET || err == syscall.EPIPE:
		r.Kind = KindResetReceived
	case r.resetSent:
		r.Kind = KindResetSent
	case err == syscall.ETIMEDOUT:
		r.Kind = KindTimeout
	case r.sawClosing:
		r.Kind = KindSimultaneous
	case r.sawFinWait1 || r.sawCloseWait:
		r.Kind = KindGraceful
	default:
		// Closed from ESTABLISHED with no reset seen either way.
		r.Kind = KindResetSent
		r.Initiator = InitiatorLocal
	}
}

// reconstructTimeWait decides, without fentry, whether the close handed
// the connection to a time-wait socket: the kernel does so only from
// FIN_WAIT2 and CLOSING, and never when the close was a reset or a
// timeout.
func (b *Builder) reconstructTimeWait(r *Record) bool {
	if b.cfg.ExactTimeWait || r.Kind == KindResetSent || r.Kind == KindResetReceived || r.Kind == KindTimeout {
		return false
	}
	last := probe.StateClose
	for j := int(r.NSpan) - 1; j >= 0; j-- {
		last = r.Spans[j].State
		break
	}
	return last == probe.StateFinWait2 || last == probe.StateClosing
}

// annotate fills what the builder knows from other inputs.
func (b *Builder) annotate(r *Record) {
	if b.lost > r.lostAtStart {
		b.flag(r, AnomalyEventsLost)
	}
	if path, ok := b.cgroups[r.CgroupID]; ok && r.Cgroup == "" {
		r.Cgroup = path
		if c, ok := cgroups.ParseContainer(path); ok {
			r.Container = c.Runtime + ":" + c.ID
		}
	}
}

func (b *Builder) finish(i int32) {
	r := &b.slab[i]
	if r.Kind == KindOpen && r.End == 0 {
		b.annotate(r)
	}
	b.h.Finished(r)
	b.release(i)
}

// timeWaitEnded ends the TIME_WAIT of the record with this tuple.
func (b *Builder) timeWaitEnded(k tupleKey, ts uint64, how TimeWaitEnd) {
	i, ok := b.timeWait[k]
	if !ok {
		delete(b.preTW, k)
		return
	}
	b.finishTimeWait(i, ts, how)
}

func (b *Builder) finishTimeWait(i int32, ts uint64, how TimeWaitEnd) {
	r := &b.slab[i]
	delete(b.timeWait, recordKey(r))
	r.TimeWait = how
	r.TimeWaitExit = ts
	if n := r.NSpan; n > 0 && r.Spans[n-1].State == probe.StateTimeWait {
		r.Spans[n-1].Exit = ts
	}
	b.finish(i)
}

// evictOldest makes room: the least recently active open record goes.
func (b *Builder) evictOldest() {
	if b.tail >= 0 {
		b.evict(b.tail, EvictCap)
		return
	}
	// Only TIME_WAIT records: end the oldest by assumption.
	if tw := b.inOrder(b.timeWaitList()); len(tw) > 0 {
		oldest := tw[0]
		b.stats.Evictions[EvictCap]++
		r := &b.slab[oldest]
		b.finishTimeWait(oldest, r.TimeWaitEnter+TimeWaitLen, TWAssumed)
	}
}

func (b *Builder) evict(i int32, reason int) {
	b.stats.Evictions[reason]++
	r := &b.slab[i]
	b.lruRemove(i)
	b.uncount(i, r)
	r.Kind = KindEvicted
	b.annotate(r)
	b.finish(i)
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
		r := &b.slab[i]
		delete(b.timeWait, recordKey(r))
		b.finish(i)
	}
	for b.head >= 0 {
		i := b.head
		r := &b.slab[i]
		b.lruRemove(i)
		b.uncount(i, r)
		b.annotate(r)
		b.finish(i)
	}
}

// SetExactTimeWait says whether the kernel reports TIME_WAIT itself; set
// before the first event.
func (b *Builder) SetExactTimeWait(on bool) { b.cfg.ExactTimeWait = on }

// Records leave in an order that depends on the inputs only, never on map
// iteration, so a replay hands them out as the live run did.

func (b *Builder) timeWaitList() []int32 {
	b.scratch = b.scratch[:0]
	for _, i := range b.timeWait {
		b.scratch = append(b.scratch, i)
	}
	return b.scratch
}

func (b *Builder) handshakeList() []int32 {
	b.scratch = b.scratch[:0]
	for i := range b.handshake {
		b.scratch = append(b.scratch, i)
	}
	return b.scratch
}

// inOrder sorts records by when they last changed state, then by id.
func (b *Builder) inOrder(idx []int32) []int32 {
	at := func(i int32) uint64 {
		r := &b.slab[i]
		if r.TimeWaitEnter != 0 {
			return r.TimeWaitEnter
		}
		if r.NSpan > 0 {
			return r.Spans[r.NSpan-1].Enter
		}
		return r.Start
	}
	slices.SortFunc(idx, func(x, y int32) int {
		if c := cmp.Compare(at(x), at(y)); c != 0 {
			return c
		}
		return cmp.Compare(b.slab[x].ID, b.slab[y].ID)
	})
	// The loops that use the list may change the maps: work on a copy.
	return append(b.order[:0], idx...)
}
