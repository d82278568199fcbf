package lifecycle

import (
	"syscall"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Closing: once a closed record has waited out its reset hold, it is
// classified (who closed it, how), handed to TIME_WAIT or finished, and
// annotated with what other inputs told the builder.

// closeRecord classifies a closed record once its reset hold is over.
func (b *Builder) closeRecord(i int32) {
	r := b.rec(i)
	r.heldUntil = 0
	if r.orphanAt != 0 && !r.orphan {
		if !r.resetSent && !r.resetReceived {
			b.becomeOrphan(i)
			return
		}
		// A reset after the CLOSE: no time-wait socket took it.
		r.finAt = 0
		b.leaveFinWait2(i, r.orphanAt)
	}
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
	b.conclude(i)
}

// conclude classifies a closed record, hands it out as closed, and holds
// it in TIME_WAIT or lets it go.
func (b *Builder) conclude(i int32) {
	r := b.rec(i)
	b.classify(r)
	if r.endKind != KindOpen {
		r.Kind = r.endKind // an orphan's end, which the states do not tell
	}
	if r.TimeWait == TWNone && b.reconstructTimeWait(r) {
		r.TimeWait = TWPending
	}
	if r.TimeWait == TWPending {
		r.TimeWaitEnter = r.End
		if r.NSpan < MaxSpans {
			r.Spans[r.NSpan] = Span{State: probe.StateTimeWait, Enter: r.End}
			r.NSpan++
		}
		if old, ok := b.timeWait[recordKey(r)]; ok && sameAsTWSeed(b.rec(old), r) {
			// A dump listed its time-wait socket before this close was
			// applied, and seeded a record for it: this is the one.
			b.dropTWSeed(old, r)
		} else if ok {
			// A new connection reused the tuple while the old one was
			// thought in TIME_WAIT: the old one ended by then.
			b.finishTimeWait(old, r.End, TWReused)
		}
		b.timeWait[recordKey(r)] = i
	}
	b.annotate(r)
	b.h.Closed(r)
	b.peerClosed(r)
	if r.TimeWait != TWPending {
		b.finish(i)
	} else if len(b.twGone) > 0 {
		b.applyTWGone(i)
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

// annotate fills what the builder knows from other inputs. Lost events
// flag only the records that show they missed one (noteGap), not every
// record alive when the loss happened.
func (b *Builder) annotate(r *Record) {
	if c, ok := b.cgroups[r.CgroupID]; ok && r.Cgroup == "" {
		r.Cgroup, r.Container = c.path, c.container
	}
}

// unverified flags a record handed out open (at the end, or evicted)
// that lived through a loss no reconciliation has checked since: its
// close may be among the lost events, and nothing says otherwise.
func (b *Builder) unverified(r *Record) {
	if b.lost > r.lostAtStart && r.reconSeen <= b.lostAt {
		b.flag(r, AnomalyEventsLost)
	}
}

func (b *Builder) finish(i int32) {
	r := b.rec(i)
	if r.Kind == KindOpen && r.End == 0 {
		b.annotate(r)
	}
	r.Emitted = b.now
	b.h.Finished(r)
	b.release(i)
}
