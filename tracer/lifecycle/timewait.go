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

// reconstructTimeWait decides, without fentry, whether the close handed
// the connection to a time-wait socket: the kernel does so only from
// FIN_WAIT2 and CLOSING, and never when the close was a reset or a
// timeout.
func (b *Builder) reconstructTimeWait(r *Record) bool {
	if b.cfg.ExactTimeWait || r.Kind == KindResetSent || r.Kind == KindResetReceived || r.Kind == KindTimeout {
		return false
	}
	if r.NSpan == 0 {
		return false
	}
	last := r.Spans[r.NSpan-1].State
	return last == probe.StateFinWait2 || last == probe.StateClosing
}

// observeTimeWait takes a time-wait socket a dump listed: the timer of a
// record in TIME_WAIT, or one tcpfsm did not see enter.
func (b *Builder) observeTimeWait(s *Socket) {
	k := s.key()
	end := s.Time + uint64(s.ExpiresMs)*1_000_000
	if i, ok := b.timeWait[k]; ok {
		r := &b.slab[i]
		r.twSeen = s.Time
		r.twExpected = end
		r.twFinWait2 = s.State == probe.StateFinWait2
		return
	}
	// A time-wait socket tcpfsm did not see enter: from before the
	// start, or from a filtered connection; counted in the gauge.
	if s.Purpose == PurposeSnapshot {
		b.preTW[k] = end
	} else if _, ok := b.preTW[k]; ok {
		b.preTW[k] = end
	}
}

// timeWaitDumpDone ends the TIME_WAIT of the namespace's records that a
// complete time-wait dump no longer lists.
func (b *Builder) timeWaitDumpDone(netns uint32, time uint64) {
	b.twPolled[netns] = time
	for _, i := range b.inOrder(b.timeWaitList()) {
		r := &b.slab[i]
		if r.NetNS != netns || r.twSeen == time || r.TimeWaitEnter+dumpMargin > time {
			continue
		}
		// Gone: at its timer's end if that has passed, else killed early
		// (reused by a new connection, or reset) before this dump.
		end := time
		if r.twExpected != 0 && r.twExpected <= time {
			end = r.twExpected
		}
		b.finishTimeWait(i, end, TWSockDiag)
	}
	for k := range b.preTW {
		if k.netns == netns && b.preTW[k] < time {
			delete(b.preTW, k)
		}
	}
}

// assumeTimeWaitEnds ends, at entry + TimeWaitLen, the TIME_WAITs no
// observation ended by now: none can come (fentry missed it, or no dump
// sees the namespace).
func (b *Builder) assumeTimeWaitEnds(now uint64) {
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
