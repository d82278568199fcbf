package lifecycle

import "github.com/tcpfsm/tcpfsm/tracer/probe"

// The transition state machine: a kernel event moves its connection's
// record from state to state, opens a record for a connection's first
// event, and attaches resets and SYN retransmits to their record.

func (b *Builder) transition(e *probe.Event) {
	old, nw := e.OldState(), e.NewState()
	i, ok := b.byID[k64(e.ConnId)]
	if !ok {
		i, ok = b.join(e)
	}
	var r *slot
	if !ok {
		i = b.start(e)
		r = b.rec(i)
	} else {
		r = b.rec(i)
		if r.End != 0 {
			// Events after CLOSE: the kernel reused nothing, so this is a
			// new life the id cannot have; count it.
			b.stats.Unmatched++
			return
		}
		if r.is(fUnjoined) {
			b.firstEvent(i, r, old)
		}
		if r.State != old {
			b.flag(r, AnomalyStateMismatch)
			if b.lost > b.rr(r).lostAtStart {
				// The transitions between the two were among the lost.
				b.flag(r, AnomalyEventsLost)
			}
		}
		b.touch(i)
	}
	if !validTransition(old, nw) {
		b.flag(r, AnomalyInvalidTransition)
	}

	r.lastEv = e.TsNs
	// An orphan handed to a time-wait socket stays in FIN_WAIT2 for now.
	candidate := nw == probe.StateClose && b.orphanClose(r, e)
	if !candidate {
		b.setState(i, r, nw, e.TsNs)
	}
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
			b.setPassive(recordKey(r), i)
		}
	case probe.StateListen:
		r.Role = RoleListener
	case probe.StateEstablished:
		r.set(fEstablished, true)
		r.HandshakeRTTUs = e.SrttUs
		if old == probe.StateSynRecv && r.Role == RolePassive {
			// An accepted socket starts with its request's SYN-ACK
			// retransmits as its retransmit count.
			r.SynRetransmits = e.TotalRetrans
		}
		if n := r.lastSpan(); n >= 1 {
			hs, enter := r.spanState[n-1], b.enterOf(r, n-1)
			if (hs == probe.StateSynSent || hs == probe.StateSynRecv) && enter != 0 {
				r.HandshakeNs = e.TsNs - enter
			}
		}
	case probe.StateFinWait1:
		if !r.is(fSawCloseWait) {
			r.set(fSawFinWait1, true)
		}
	case probe.StateCloseWait:
		if !r.is(fSawFinWait1) {
			r.set(fSawCloseWait, true)
		}
	case probe.StateClosing:
		r.set(fSawClosing, true)
	case probe.StateClose:
		if candidate {
			// Its reset hold tells whether a time-wait socket took it
			// (closeRecord); till then it is still in FIN_WAIT2.
			b.addOrphan(i, e.TsNs)
		} else {
			r.End = e.TsNs
		}
		r.SkErr = e.SkErr
		if e.Flags&probe.FlagTimeWait != 0 && !candidate {
			r.TimeWait = TWPending
			r.set(fTwFinWait2, e.Flags&probe.FlagTWFinWait2 != 0)
		}
		b.lruRemove(i)
		b.unindex(i)
		b.closedDuringDump(r)
		b.closingOf(r).heldUntil = e.TsNs + uint64(b.cfg.ResetHold)
		b.held = append(b.held, i)
	}
}

// start opens a record for a connection's first event.
func (b *Builder) start(e *probe.Event) int32 {
	if b.open >= b.cfg.MaxTracked || b.records() >= b.cfg.MaxTracked {
		b.evictOldest()
	}
	i := b.alloc()
	r := b.rec(i)
	r.ID = e.ConnId
	r.Family, r.Laddr, r.Raddr, r.Lport, r.Rport, r.NetNS = e.Family, e.Saddr, e.Daddr, e.Sport, e.Dport, e.Netns
	r.Start = e.TsNs
	b.setLostAtStart(r)
	r.prev, r.next, r.tupNext = -1, -1, -1
	b.byID[k64(r.ID)] = i
	b.lruPush(i)
	b.index(i)
	b.stats.Records++

	old := e.OldState()
	if OpeningRole(old, e.NewState()) != RoleUnknown && !e.Partial() {
		r.State = old
		return i
	}
	// Midway: the state it was in began before anything was seen.
	b.flag(r, AnomalyPartial)
	if b.lost > 0 {
		// No snapshot knew it: its birth may be among the lost events.
		b.flag(r, AnomalyEventsLost)
	}
	r.State = old
	b.addSpan(i, r, Span{State: old})
	r.set(fEstablished, synchronized(old))
	if old != probe.StateClose {
		b.count(i, r)
	}
	b.guessRole(r)
	return i
}

// setState closes the current span and opens one for the new state.
func (b *Builder) setState(i int32, r *slot, s probe.State, ts uint64) {
	b.uncount(i, r)
	r.State = s
	if s == probe.StateClose {
		if r.NSpan > 0 {
			b.setExit(i, r, ts)
		}
		return
	}
	b.count(i, r)
	// The current span's exit is ts: the next span's entry.
	if !b.addSpanAfter(i, r, Span{State: s, Enter: ts}, ts) {
		// More states than a connection can pass through: keep the last.
		b.replaceLast(i, r, Span{State: s, Enter: ts})
		b.flag(r, AnomalyInvalidTransition)
	}
}

// updateOwner takes the event's owner when it knows better.
func (b *Builder) updateOwner(r *slot, e *probe.Event) {
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
	b.setOwner(r, ownerKey{e.CgroupId, e.Pid, e.Comm})
	r.Owner = src
	if src == probe.OwnerCarried {
		r.Owner = probe.OwnerTask
	}
}

func (b *Builder) flag(r *slot, a Anomaly) {
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
	i, ok := b.byID[k64(e.ConnId)]
	if !ok {
		i, ok = b.joinSide(e)
	}
	if !ok {
		b.stats.Unmatched++
		return
	}
	r := b.rec(i)
	if r.End != 0 && b.cl(r).heldUntil == 0 {
		b.stats.LateResets++
		return
	}
	r.lastEv = e.TsNs
	switch probe.EventType(e.Type) {
	case probe.TypeResetSent:
		r.set(fResetSent, true)
	case probe.TypeResetReceived:
		r.set(fResetReceived, true)
	case probe.TypeSynRetransmit:
		r.SynRetransmits++
	}
	b.updateOwner(r, e)
}

// OpeningRole says whether a transition starts a socket's life, and in
// which role: connect() (CLOSE to SYN_SENT, active), listen() (CLOSE to
// LISTEN, a listener), or a SYN accepted by a listener (LISTEN to
// SYN_RECV, passive). Any other transition starts none: RoleUnknown. The
// BPF program asks the same question in C (bpf/tcpfsm.bpf.c) to tell a
// connection it saw start from one it finds midway.
func OpeningRole(from, to probe.State) Role {
	switch {
	case from == probe.StateClose && to == probe.StateSynSent:
		return RoleActive
	case from == probe.StateClose && to == probe.StateListen:
		return RoleListener
	case from == probe.StateListen && to == probe.StateSynRecv:
		return RolePassive
	}
	return RoleUnknown
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
