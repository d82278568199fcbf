package lifecycle

import "github.com/tcpfsm/tcpfsm/tracer/probe"

// Seeding time-wait sockets. A dump (the snapshot at start, or a
// reconciliation) lists time-wait sockets no record holds: connections
// that closed before tcpfsm knew of them. Each becomes a record too,
// seeded and partial like any other (seed.go), in the state ss lists it
// in, its time-wait socket's substate:
//
//   - TIME_WAIT: a connection that closed with both FINs exchanged
//     (close kind graceful) and is in TIME_WAIT now, in b.timeWait like
//     one seen entering it. Its close and its entry into TIME_WAIT are
//     unknown (End and TimeWaitEnter 0, null in the records); its
//     timer, read from the dump, is when it is due to end. It ends as
//     any other TIME_WAIT: fentry on inet_twsk_kill, a dump that no
//     longer lists it, its timer where no dump sees the namespace, or a
//     connect() that takes its endpoints over. It is handed out once,
//     Finished at its end: its close was never seen, so it is not
//     counted as one (Closed is not called).
//   - FIN_WAIT2: an orphan (orphan.go), open and counted in FIN_WAIT2,
//     its FIN_WAIT2 entered at an unknown time; the dump's timer is its
//     death. It ends as any orphan: its peer's FIN (TIME_WAIT, then
//     graceful), its timer (fin_wait2_timeout), or a reset.
//
// Neither has an owner: the kernel keeps none for a time-wait socket.
// They never join an event (no event names a time-wait socket but
// fentry's end and the orphan's peer, both found by endpoints).

// twSeed reports whether a record was seeded from a time-wait socket and
// no event has touched it since.
func twSeed(r *slot) bool {
	return r.Seeded && r.lastEv == 0 && (r.is(fOrphan) || r.TimeWait == TWPending)
}

// seedTimeWait opens a record for a time-wait socket s of a dump that no
// record holds; -1 when it cannot be one.
func (b *Builder) seedTimeWait(s *Socket) int32 {
	if s.State != probe.StateTimeWait && s.State != probe.StateFinWait2 {
		return -1
	}
	i, r := b.allocSeed(s)
	r.Seeded = true
	b.flag(r, AnomalyPartial)
	// Both reached a time-wait socket through ESTABLISHED and our FIN.
	r.set(fEstablished, true)
	r.set(fSawFinWait1, true)
	cl := b.closingOf(r)
	cl.twSeen, cl.twExpected = s.Time, s.Time+uint64(s.ExpiresMs)*1_000_000
	b.addSpan(i, r, Span{State: s.State}) // entered at an unknown time
	b.byID[k64(r.ID)] = i
	b.guessRole(r)
	k := s.key()
	if s.State == probe.StateFinWait2 {
		r.State = probe.StateFinWait2
		b.count(i, r)
		// An orphan since at least the dump: orphanAt bounds its times.
		b.addOrphan(i, s.Time)
		r.set(fOrphan, true)
		b.lruPush(i)
	} else {
		r.State = probe.StateClose
		r.Kind = KindGraceful
		r.TimeWait = TWPending
		b.timeWait[k] = i
	}
	b.stats.Seeded++
	return i
}

// sameAsTWSeed reports whether record r, reaching the endpoints of a
// time-wait socket a dump seeded as record seed, is that very
// connection, whose close the builder got after the dump listed its
// time-wait socket (the snapshot's race with events): r was there before
// the dump began, or started midway. The kernel holds one socket per
// endpoints, so a connection that opened since then took the endpoints
// over (a connect() or a SYN reusing a TIME_WAIT).
func sameAsTWSeed(seed, r *slot) bool {
	return twSeed(seed) && (r.Start < seed.Start || r.Anomalies&AnomalyPartial != 0 && !r.Seeded)
}

// dropTWSeed forgets a time-wait seed that turned out to be the time-wait
// socket of record r: r takes its timer; nothing is handed out.
func (b *Builder) dropTWSeed(i int32, r *slot) {
	seed := b.rec(i)
	cl := b.closingOf(r)
	cl.twSeen, cl.twExpected = b.cl(seed).twSeen, b.cl(seed).twExpected
	if seed.is(fOrphan) {
		b.lruRemove(i)
	}
	b.uncount(i, seed)
	if k := recordKey(seed); b.timeWait[k] == i {
		delete(b.timeWait, k)
	}
	b.stats.Seeded--
	b.stats.SeedsReplaced++
	b.release(i)
}

// twDue is when a record in TIME_WAIT is due to leave it: TimeWaitLen
// after its entry, or, for a seed whose entry is unknown, its timer.
func (b *Builder) twDue(r *slot) uint64 {
	if r.TimeWaitEnter == 0 {
		return b.cl(r).twExpected
	}
	return r.TimeWaitEnter + TimeWaitLen
}

// twSince is when the builder first knew a record in TIME_WAIT was in
// it: its entry, or when a dump found it there.
func (b *Builder) twSince(r *slot) uint64 {
	if enter := r.TimeWaitEnter; enter != 0 {
		return enter
	}
	return r.Start
}
