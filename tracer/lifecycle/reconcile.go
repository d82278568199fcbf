package lifecycle

import (
	"slices"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Reconciliation: a dump of every TCP socket of a namespace, made while
// events keep coming, compared with the records. The dump's inputs are a
// DumpDone that begins it (PurposeReconcileBegin, at the dump's time),
// its sockets (PurposeReconcile, in chunks between events), and a
// DumpDone that ends a complete dump (PurposeReconcile) or one that
// failed (PurposeReconcileAbort: nothing is repaired, a namespace that
// could not be dumped is never judged by absence). The rules:
//
//   - a record with an event since the dump began is left alone: its
//     events know better than the dump;
//   - a tuple closed since the dump began is not brought back, though
//     the dump may have listed it before it closed: a socket's CLOSE, or
//     the end of a time-wait socket a record held (an orphan's death,
//     the end of TIME_WAIT, told by fentry or a time-wait poll applied
//     before the dump's sockets);
//   - a socket no record holds is seeded (action seeded);
//   - a record in another state than the dump's is moved to it, entered
//     at an unknown time (action corrected);
//   - at the end of a complete dump, an open record of the namespace
//     that the dump did not list, and older than the dump, ended unseen:
//     KindUnobserved, End the dump's time (action ended);
//   - each record repaired is flagged events_lost, and only those.
//
// The states compared are those sock_diag reports (idiag_state), a
// time-wait socket's being its substate.

// Reconciliation actions, for Stats.Reconciled.
const (
	ReconcileSeeded = iota
	ReconcileEnded
	ReconcileCorrected
	ReconcileActions // how many there are
)

// ReconcileActionName names a reconciliation action.
func ReconcileActionName(i int) string {
	return [...]string{"seeded", "ended", "corrected"}[i]
}

// reconRun is a reconciliation dump of one namespace under way.
type reconRun struct {
	start  uint64
	closed map[tupleKey]struct{} // closed since start
}

func (b *Builder) reconcileBegin(netns uint32, time uint64) {
	b.recon[netns] = &reconRun{start: time, closed: map[tupleKey]struct{}{}}
}

// closedDuringDump remembers a tuple closed while its namespace is
// dumped: a full socket's CLOSE, or a time-wait socket's end.
func (b *Builder) closedDuringDump(r *slot) {
	if run := b.recon[r.NetNS]; run != nil {
		run.closed[recordKey(r)] = struct{}{}
	}
}

// Reconciling reports whether a reconciliation dump of the namespace is
// under way.
func (b *Builder) Reconciling(netns uint32) bool { return b.recon[netns] != nil }

func (b *Builder) observeReconcile(s *Socket) {
	run := b.recon[s.NetNS]
	if run == nil {
		return // no dump began: a recording cut short
	}
	k := s.key()
	if s.TimeWait {
		b.reconcileTimeWait(run, s, k)
		return
	}
	if s.State == probe.StateListen {
		b.listening[listenKey{s.NetNS, s.Lport}] = true
	}
	for i := b.tupleHead(k); i >= 0; i = b.tupleNext(i, k) {
		r := b.rec(i)
		if r.reconSeen == run.start {
			continue // a listener sharing the endpoints, matched already
		}
		r.reconSeen = run.start
		if r.lastEv < run.start && r.Start < run.start && r.State != s.State {
			b.correct(i, r, s.State, s.Time)
		}
		return
	}
	if _, ok := run.closed[k]; ok {
		return
	}
	if _, ok := b.timeWait[k]; ok {
		return
	}
	if i := b.seedRecord(s); i >= 0 {
		r := b.rec(i)
		r.reconSeen = run.start
		b.flag(r, AnomalyEventsLost)
		b.stats.Reconciled[ReconcileSeeded]++
	}
}

// reconcileTimeWait: a time-wait socket the dump listed. One in TIME_WAIT
// in the records gets its timer; one unknown is seeded, as at start.
func (b *Builder) reconcileTimeWait(run *reconRun, s *Socket, k tupleKey) {
	if i, ok := b.orphans[k]; ok {
		// An orphan's time-wait socket (orphan.go): still in FIN_WAIT2 or
		// past the peer's FIN; the record is there and accounted for.
		b.rec(i).reconSeen = run.start
		b.observeOrphan(i, s)
		return
	}
	end := s.Time + uint64(s.ExpiresMs)*1_000_000
	if i, ok := b.timeWait[k]; ok {
		r := b.rec(i)
		if b.twListed(r, s.Time, end) {
			r.set(fTwFinWait2, s.State == probe.StateFinWait2)
		}
		r.reconSeen = run.start
		return
	}
	if _, ok := run.closed[k]; ok {
		return // its record closed during the dump and enters TIME_WAIT
	}
	if b.tupleHead(k) >= 0 {
		return // an open record: it closed before the dump, its event is due
	}
	// Closed unseen (its events lost, or a connection the snapshot
	// missed): a seeded record, as at start (seed_timewait.go).
	if i := b.seedTimeWait(s); i >= 0 {
		r := b.rec(i)
		r.reconSeen = run.start
		b.flag(r, AnomalyEventsLost)
		b.stats.Reconciled[ReconcileSeeded]++
	}
}

// correct moves a record to the state the kernel reports, entered at an
// unknown time, found in it at t.
func (b *Builder) correct(i int32, r *slot, s probe.State, t uint64) {
	if s == probe.StateClose || s > probe.MaxState {
		return
	}
	b.uncount(i, r)
	r.State = s
	if !b.addSpan(i, r, Span{State: s}) {
		b.replaceLast(i, r, Span{State: s})
	}
	b.rareOf(r).foundAt = t
	r.set(fEstablished, r.is(fEstablished) || synchronized(s))
	if s == probe.StateListen {
		r.Role = RoleListener
	}
	b.count(i, r)
	b.flag(r, AnomalyEventsLost)
	b.stats.Reconciled[ReconcileCorrected]++
}

// reconcileDone ends a complete reconciliation dump of the namespace.
func (b *Builder) reconcileDone(netns uint32) {
	run := b.recon[netns]
	if run == nil {
		return
	}
	delete(b.recon, netns)
	b.stats.Reconciliations++
	b.scratch = b.scratch[:0]
	for i := b.tail; i >= 0; i = b.rec(i).prev {
		r := b.rec(i)
		// Orphans have no full socket to list: the time-wait dump ends them
		// (timeWaitDumpDone, below) with their own kinds.
		if r.NetNS == netns && r.reconSeen != run.start && r.lastEv < run.start && r.Start < run.start && b.cl(r).orphanAt == 0 {
			b.scratch = append(b.scratch, i)
		}
	}
	// Oldest activity first, as the LRU gave them: an order of the inputs.
	// A copy: ending a record may reuse scratch.
	gone := slices.Clone(b.scratch)
	for _, i := range gone {
		b.endUnobserved(i, run.start)
	}
	b.timeWaitDumpDone(netns, run.start)
}

// endUnobserved ends a record whose socket the kernel no longer has.
func (b *Builder) endUnobserved(i int32, t uint64) {
	r := b.rec(i)
	b.lruRemove(i)
	b.unindex(i)
	b.uncount(i, r)
	r.End = t
	r.State = probe.StateClose
	r.Kind = KindUnobserved
	b.flag(r, AnomalyEventsLost)
	b.stats.Reconciled[ReconcileEnded]++
	b.annotate(r)
	b.closed(i)
	b.finishClosed(i)
}
