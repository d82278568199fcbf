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
	b.closingOf(r).heldUntil = 0
	if b.cl(r).orphanAt != 0 && !r.is(fOrphan) {
		if !r.is(fResetSent) && !r.is(fResetReceived) {
			b.becomeOrphan(i)
			return
		}
		// A reset after the CLOSE: no time-wait socket took it.
		b.closingOf(r).finAt = 0
		b.leaveFinWait2(i, b.cl(r).orphanAt)
	}
	k := recordKey(r)
	if r.Role == RolePassive {
		if r.is(fPassive) {
			b.dropPassive(k, i) // the one registered for k
		} else if !r.is(fEstablished) && !r.is(fResetSent) && !r.is(fResetReceived) && r.SkErr == 0 {
			if _, ok := b.passiveOf(k); ok {
				// Its twin holds the connection: the kernel lost a race
				// creating this socket and closed it at once.
				b.stats.TwinChildren++
				b.release(i)
				return
			}
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
		b.addSpan(i, r, Span{State: probe.StateTimeWait, Enter: r.End})
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
	b.closed(i)
	b.peerClosed(r)
	if r.TimeWait != TWPending {
		b.finishClosed(i)
	} else if len(b.twGone) > 0 {
		b.applyTWGone(i)
	}
}

// classify decides the initiator and the kind of close.
func (b *Builder) classify(r *slot) {
	err := syscall.Errno(r.SkErr)
	switch {
	case r.Role == RoleListener:
		r.Kind = KindListenerClosed
		return
	case r.is(fSawClosing):
		r.Initiator = InitiatorBoth
	case r.is(fSawFinWait1):
		r.Initiator = InitiatorLocal
	case r.is(fSawCloseWait):
		r.Initiator = InitiatorRemote
	case r.is(fResetSent):
		r.Initiator = InitiatorLocal
	case r.is(fResetReceived) || err == syscall.ECONNRESET || err == syscall.EPIPE || err == syscall.ECONNREFUSED:
		r.Initiator = InitiatorRemote
	case err == syscall.ETIMEDOUT:
		r.Initiator = InitiatorLocal
	}

	if !r.is(fEstablished) {
		switch {
		case r.Role == RoleActive && (err == syscall.ECONNREFUSED || r.is(fResetReceived)):
			r.Kind = KindRefused
		case err == syscall.ETIMEDOUT:
			r.Kind = KindConnectTimeout
		case r.is(fResetReceived):
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
	case r.is(fResetReceived) || err == syscall.ECONNRESET || err == syscall.EPIPE:
		r.Kind = KindResetReceived
	case r.is(fResetSent):
		r.Kind = KindResetSent
	case err == syscall.ETIMEDOUT:
		r.Kind = KindTimeout
	case r.is(fSawClosing):
		r.Kind = KindSimultaneous
	case r.is(fSawFinWait1) || r.is(fSawCloseWait):
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
func (b *Builder) annotate(r *slot) {
	if c, ok := b.cgroups[b.cgroupID(r)]; ok {
		if cg := b.cl(r).cg; cg == nil || cg.path == "" {
			b.closingOf(r).cg = c
		}
	}
}

// unverified flags a record handed out open (at the end, or evicted)
// that lived through a loss no reconciliation has checked since: its
// close may be among the lost events, and nothing says otherwise.
func (b *Builder) unverified(r *slot) {
	if b.lost > b.rr(r).lostAtStart && r.reconSeen <= b.lostAt {
		b.flag(r, AnomalyEventsLost)
	}
}

func (b *Builder) finish(i int32) {
	r := b.rec(i)
	if r.Kind == KindOpen && r.End == 0 {
		b.annotate(r)
	}
	b.fill(i, &b.out, b.now)
	b.outFor = -1
	b.h.Finished(&b.out)
	b.release(i)
}

// finishClosed finishes record i right after its Closed: the copy
// handed out then is still in b.out (unless another record was handed
// out since), and nothing but Emitted changed.
func (b *Builder) finishClosed(i int32) {
	if b.outFor != i {
		b.finish(i)
		return
	}
	b.outFor = -1
	b.out.Emitted = b.now
	b.h.Finished(&b.out)
	b.release(i)
}

// closed hands record i out as closed. The handler may attach the
// owner's names (Meta, Peer): the builder keeps them for its Finished.
func (b *Builder) closed(i int32) {
	b.fill(i, &b.out, 0)
	b.outFor = -1
	b.h.Closed(&b.out)
	b.attach(i, b.rec(i), &b.out)
	b.outFor = i
}
