package lifecycle

import "github.com/tcpfsm/tcpfsm/tracer/probe"

// TIME_WAIT: the tracepoint never shows it (the kernel hands the
// connection to a time-wait socket and the full socket goes to CLOSE).
// With fentry the kernel flags a close into TIME_WAIT and reports its end;
// without it, a close is reconstructed as one into TIME_WAIT and sock_diag
// dumps of the namespace observe its end; where no dump can see it, the
// end is assumed TimeWaitLen after the start. With fentry the dumps still
// run, a net under it: a TIME_WAIT whose time-wait socket two consecutive
// dumps no longer list ended (an end the hooks did not see, or a close
// flagged into TIME_WAIT that the kernel gave no time-wait socket).

const (
	// How long past the expected end of TIME_WAIT to wait for its
	// observation before assuming it.
	timeWaitGrace = 2_000_000_000
	// A record entering TIME_WAIT this close to a dump may not be in it yet.
	dumpMargin = 100_000_000
)

// TimeWaitNetNS lists the network namespaces whose time-wait sockets
// sock_diag should observe: those of records in TIME_WAIT (with fentry
// too: the kernel ends some that its hooks do not see) and of orphans in
// FIN_WAIT2, whose substate only a dump shows.
func (b *Builder) TimeWaitNetNS(dst []uint32) []uint32 {
	seen := map[uint32]bool{}
	add := func(ns uint32) {
		if !seen[ns] {
			seen[ns] = true
			dst = append(dst, ns)
		}
	}
	for k := range b.timeWait {
		add(k.netns)
	}
	for k := range b.orphans {
		add(k.netns)
	}
	return dst
}

// reconstructTimeWait decides, without fentry, whether the close handed
// the connection to a time-wait socket: the kernel does so only from
// FIN_WAIT2 and CLOSING, and never when the close was a reset or a
// timeout.
func (b *Builder) reconstructTimeWait(r *slot) bool {
	if b.cfg.ExactTimeWait || r.Kind == KindResetSent || r.Kind == KindResetReceived || r.Kind == KindTimeout ||
		r.endKind != KindOpen {
		return false
	}
	if r.NSpan == 0 {
		return false
	}
	last := r.spanState[r.lastSpan()]
	return last == probe.StateFinWait2 || last == probe.StateClosing
}

// observeTimeWait takes a time-wait socket a dump listed: an orphan's
// (orphan.go), the timer of a record in TIME_WAIT, or one tcpfsm did not
// see enter.
func (b *Builder) observeTimeWait(s *Socket) {
	k := s.key()
	if i, ok := b.orphans[k]; ok {
		b.observeOrphan(i, s)
		return
	}
	end := s.Time + uint64(s.ExpiresMs)*1_000_000
	if i, ok := b.timeWait[k]; ok {
		r := b.rec(i)
		if s.Time < r.TimeWaitEnter {
			return // dumped before its FIN came: says nothing of TIME_WAIT
		}
		if b.twListed(r, s.Time, end) {
			r.set(fTwFinWait2, s.State == probe.StateFinWait2)
		}
		return
	}
	// A time-wait socket tcpfsm did not see enter. From before the
	// start: a seeded record (seed_timewait.go). In a poll, one of a
	// connection the filters leave out, or whose close is yet to be
	// applied: nothing.
	if s.Purpose == PurposeSnapshot {
		b.seedTimeWait(s)
	}
}

// twListed takes a dump at t that listed r's time-wait socket, its timer
// ending at end, unless a later dump listed it already: a reconciliation's
// dump is applied in chunks, and a time-wait poll that began after it may
// come in between. What a record was last seen at only moves forward, so
// that the reconciliation's end does not take the poll's sighting for
// none (it ended live orphans as aborted, and the next reconciliation
// seeded them again: the 6.12 VM, reconciling every second).
func (b *Builder) twListed(r *slot, t, end uint64) bool {
	if t < b.cl(r).twSeen {
		return false
	}
	cl := b.closingOf(r)
	cl.twSeen, cl.twExpected = t, end
	return true
}

// timeWaitDumpDone ends the TIME_WAIT of the namespace's records that a
// complete time-wait dump no longer lists, and the orphans it no longer
// lists. With fentry, TIME_WAIT's ends are its to report, and a dump ends
// only a TIME_WAIT that the one before it already missed: the hooks had
// a dump's interval to tell it. Any complete dump that asked for the
// states FIN_WAIT2 and TIME_WAIT (a reconciliation of every state too)
// may end here, its time-wait sockets fed to Observe before.
func (b *Builder) timeWaitDumpDone(netns uint32, time uint64) {
	prev, polled := b.twPolled[netns]
	b.twPolled[netns] = time
	b.orphanDumpDone(netns, time)
	// Gone by since: this dump without fentry, the one before with it.
	since := time
	if b.cfg.ExactTimeWait {
		if !polled || prev >= time {
			return // no dump before this one (or one applied out of order)
		}
		since = prev
	}
	gone := b.pick(b.timeWait, func(r *slot) bool {
		return r.NetNS == netns && b.cl(r).twSeen < since && b.twSince(r)+dumpMargin <= since
	})
	for _, i := range gone {
		r := b.rec(i)
		// Gone: at its timer's end if that has passed, else killed early
		// (reused by a new connection, or reset) before the dump that
		// first missed it.
		end := since
		if x := b.cl(r).twExpected; x != 0 && x <= since {
			end = x
		}
		b.finishTimeWait(i, end, TWSockDiag)
	}
}

// assumeTimeWaitEnds ends, at entry + TimeWaitLen, the TIME_WAITs no
// observation ended by now: none can come (fentry missed it, or no dump
// sees the namespace).
func (b *Builder) assumeTimeWaitEnds(now uint64) {
	due := b.pick(b.timeWait, func(r *slot) bool {
		if now < b.twDue(r)+timeWaitGrace {
			return false
		}
		// Where sock_diag sees the netns, its dumps decide (with fentry
		// too: a TIME_WAIT a retransmitted FIN restarted lasts longer).
		polled, ok := b.twPolled[r.NetNS]
		return !ok || polled <= b.twSince(r)
	})
	for _, i := range due {
		r := b.rec(i)
		b.timeWaitEnded(recordKey(r), b.twDue(r), TWAssumed)
	}
}

// timeWaitEnded ends the TIME_WAIT of the record with this tuple.
func (b *Builder) timeWaitEnded(k tupleKey, ts uint64, how TimeWaitEnd) {
	i, ok := b.timeWait[k]
	if !ok {
		return
	}
	b.finishTimeWait(i, ts, how)
}

// twSockEnded: fentry saw a time-wait socket go.
func (b *Builder) twSockEnded(e *probe.Event) {
	k := eventKey(e)
	i, inOrphans := b.orphans[k] // an orphan, or a candidate in its reset hold
	if inOrphans && b.rec(i).is(fOrphan) {
		b.orphanTWEnd(i, e.TsNs, e.OldState())
		return
	}
	if _, ok := b.timeWait[k]; ok && !inOrphans {
		b.timeWaitEnded(k, e.TsNs, TWExact)
		return
	}
	// Its record is not in TIME_WAIT (or an orphan) yet: the kernel ended
	// the time-wait socket while the connection's CLOSE waits out its reset
	// hold (a reset killed it within milliseconds), or the end came before
	// that CLOSE (the events of two CPUs). The record takes it once its
	// hold is over (applyTWGone); one that never comes (a connection the
	// builder does not know) is forgotten after twGoneKeep.
	b.twGone[k] = twGoneEnd{ts: e.TsNs, substate: e.OldState()}
}

// twGoneEnd is the end of a time-wait socket fentry told before its
// record was there to take it.
type twGoneEnd struct {
	ts       uint64
	substate probe.State
}

// twGoneKeep: how long an end waits for its record. Its CLOSE is at most
// the reset hold away, or a few events of another CPU.
const twGoneKeep = 2_000_000_000

// applyTWGone ends, at once, the TIME_WAIT or the orphan that record i
// just became when fentry had told the end of its time-wait socket
// already. An end from before the record's start was another
// connection's, on the same endpoints.
func (b *Builder) applyTWGone(i int32) {
	r := b.rec(i)
	k := recordKey(r)
	g, ok := b.twGone[k]
	if !ok {
		return
	}
	delete(b.twGone, k)
	if g.ts < r.Start {
		return
	}
	if j, ok := b.orphans[k]; ok && j == i && r.is(fOrphan) {
		b.orphanTWEnd(i, max(g.ts, b.cl(r).orphanAt), g.substate)
		return
	}
	if j, ok := b.timeWait[k]; ok && j == i {
		b.timeWaitEnded(k, max(g.ts, r.TimeWaitEnter), TWExact)
	}
}

// forgetTWGone drops the ends no record took.
func (b *Builder) forgetTWGone(now uint64) {
	for k, g := range b.twGone {
		if g.ts+twGoneKeep < now {
			delete(b.twGone, k)
		}
	}
}

func (b *Builder) finishTimeWait(i int32, ts uint64, how TimeWaitEnd) {
	r := b.rec(i)
	delete(b.timeWait, recordKey(r))
	b.closedDuringDump(r)
	r.TimeWait = how
	b.closingOf(r).TimeWaitExit = ts
	if n := r.lastSpan(); n >= 0 && r.spanState[n] == probe.StateTimeWait {
		b.setExit(i, r, ts)
	}
	b.finish(i)
}
