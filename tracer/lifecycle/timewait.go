package lifecycle

import "github.com/tcpfsm/tcpfsm/tracer/probe"

// TIME_WAIT: the tracepoint never shows it (the kernel hands the
// connection to a time-wait socket and the full socket goes to CLOSE).
// With fentry the kernel flags a close into TIME_WAIT and reports its end;
// without it, a close is reconstructed as one into TIME_WAIT and sock_diag
// dumps of the namespace observe its end; where no dump can see it, the
// end is assumed TimeWaitLen after the start.

const (
	// How long past the expected end of TIME_WAIT to wait for its
	// observation before assuming it.
	timeWaitGrace = 2_000_000_000
	// A record entering TIME_WAIT this close to a dump may not be in it yet.
	dumpMargin = 100_000_000
)

// TimeWaitNetNS lists the network namespaces whose time-wait sockets
// sock_diag should observe: those of records in TIME_WAIT (without
// fentry, which reports their ends) and of orphans in FIN_WAIT2, whose
// substate only a dump shows.
func (b *Builder) TimeWaitNetNS(dst []uint32) []uint32 {
	seen := map[uint32]bool{}
	add := func(ns uint32) {
		if !seen[ns] {
			seen[ns] = true
			dst = append(dst, ns)
		}
	}
	if !b.cfg.ExactTimeWait {
		for k := range b.timeWait {
			add(k.netns)
		}
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
func (b *Builder) reconstructTimeWait(r *Record) bool {
	if b.cfg.ExactTimeWait || r.Kind == KindResetSent || r.Kind == KindResetReceived || r.Kind == KindTimeout ||
		r.endKind != KindOpen {
		return false
	}
	if r.NSpan == 0 {
		return false
	}
	last := r.Spans[r.NSpan-1].State
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
		r.twSeen = s.Time
		r.twExpected = end
		r.twFinWait2 = s.State == probe.StateFinWait2
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

// timeWaitDumpDone ends the TIME_WAIT of the namespace's records that a
// complete time-wait dump no longer lists, and the orphans it no longer
// lists. With fentry, TIME_WAIT's ends are its to report. Any complete
// dump that asked for the states FIN_WAIT2 and TIME_WAIT (a
// reconciliation of every state too) may end here, its time-wait sockets
// fed to Observe before.
func (b *Builder) timeWaitDumpDone(netns uint32, time uint64) {
	b.twPolled[netns] = time
	b.orphanDumpDone(netns, time)
	if b.cfg.ExactTimeWait {
		return
	}
	gone := b.pick(b.timeWait, func(r *Record) bool {
		return r.NetNS == netns && r.twSeen != time && twSince(r)+dumpMargin <= time
	})
	for _, i := range gone {
		r := b.rec(i)
		// Gone: at its timer's end if that has passed, else killed early
		// (reused by a new connection, or reset) before this dump.
		end := time
		if r.twExpected != 0 && r.twExpected <= time {
			end = r.twExpected
		}
		b.finishTimeWait(i, end, TWSockDiag)
	}
}

// assumeTimeWaitEnds ends, at entry + TimeWaitLen, the TIME_WAITs no
// observation ended by now: none can come (fentry missed it, or no dump
// sees the namespace).
func (b *Builder) assumeTimeWaitEnds(now uint64) {
	due := b.pick(b.timeWait, func(r *Record) bool {
		if now < twDue(r)+timeWaitGrace {
			return false
		}
		// Where sock_diag sees the netns, its dumps decide.
		polled, ok := b.twPolled[r.NetNS]
		return !ok || polled <= twSince(r) || b.cfg.ExactTimeWait
	})
	for _, i := range due {
		r := b.rec(i)
		b.timeWaitEnded(recordKey(r), twDue(r), TWAssumed)
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
	if i, ok := b.orphans[k]; ok {
		b.orphanTWEnd(i, e.TsNs, e.OldState())
		return
	}
	b.timeWaitEnded(k, e.TsNs, TWExact)
}

func (b *Builder) finishTimeWait(i int32, ts uint64, how TimeWaitEnd) {
	r := b.rec(i)
	delete(b.timeWait, recordKey(r))
	b.closedDuringDump(r)
	r.TimeWait = how
	r.TimeWaitExit = ts
	if n := r.NSpan; n > 0 && r.Spans[n-1].State == probe.StateTimeWait {
		r.Spans[n-1].Exit = ts
	}
	b.finish(i)
}
