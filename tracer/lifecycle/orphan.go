package lifecycle

import (
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Orphans in FIN_WAIT2. When its owner has closed a connection and the
// peer has acknowledged our FIN but not sent its own, the kernel hands the
// connection to a time-wait socket in its FIN_WAIT2 substate
// (tcp_time_wait(sk, TCP_FIN_WAIT2, tmo)) and the full socket goes to
// CLOSE: the tracepoint shows FIN_WAIT2 -> CLOSE, and then nothing, for
// no tracepoint fires for time-wait sockets. The connection is still in
// FIN_WAIT2 (ss lists it so): it becomes TIME_WAIT when the peer's FIN
// arrives, or dies when the substate's timer (tcp_fin_timeout) fires.
//
// Such a record stays open, in FIN_WAIT2 and counted there, and is not
// classified or handed out as closed until one of these tells its end:
//   - the peer's record, when the peer is traced too (loopback, or another
//     traced namespace): its LAST_ACK acknowledged means our time-wait
//     socket took its FIN, at the time it entered LAST_ACK; its reset
//     means ours was killed by one;
//   - a sock_diag dump of the namespace's time-wait sockets (timewait.go):
//     the substate TIME_WAIT with its timer e at dump time T means the FIN
//     came at T + e - 60 s; gone from a dump, it died (at its timer's end
//     when that had passed);
//   - fentry on inet_twsk_kill, where the kernel has it, with the
//     substate it died in;
//   - with none of these, its timer, assumed from the namespace's
//     tcp_fin_timeout.

// DefaultFinTimeout is the kernel's default tcp_fin_timeout, assumed for
// namespaces whose own the builder was not told.
const DefaultFinTimeout = 60 * time.Second

// MaxFinTimeout bounds the tcp_fin_timeout the builder takes: a larger
// value (the sysctl takes any) is taken as this.
const MaxFinTimeout = time.Hour

// orphanGrace is how long past an orphan's expected death the builder
// waits for an observation before it assumes it; and how stale a
// namespace's last dump may be before its orphans are assumed.
const (
	orphanGrace     = 2_000_000_000
	orphanDumpStale = 2 * 60_000_000_000
)

// flowKey is a connection's endpoints without its namespace: the two
// ends of a connection between two namespaces share it, reversed.
type flowKey struct {
	family       uint8
	laddr, raddr [16]byte
	lport, rport uint16
}

func (k tupleKey) flow() flowKey { return flowKey{k.family, k.laddr, k.raddr, k.lport, k.rport} }

// reversed is the key of the other end, in netns.
func (k tupleKey) reversed(netns uint32) tupleKey {
	return tupleKey{netns, k.family, k.raddr, k.laddr, k.rport, k.lport}
}

// FinTimeout tells the builder a namespace's tcp_fin_timeout, for the
// orphans no observation ends.
func (b *Builder) FinTimeout(netns uint32, d time.Duration) {
	if d <= 0 {
		return
	}
	b.finTimeout[netns] = min(d, MaxFinTimeout)
}

// orphanLeft is how long the time-wait socket of an orphan handed over
// at CLOSE lives in FIN_WAIT2: the kernel gives it tcp_fin_timeout, less
// the 60 s the full socket already waited when the timeout is longer.
func (b *Builder) orphanLeft(netns uint32) uint64 {
	ft, ok := b.finTimeout[netns]
	if !ok {
		ft = DefaultFinTimeout
	}
	if ft > TimeWaitLen {
		ft -= TimeWaitLen
	}
	return uint64(ft)
}

// orphanClose says whether a CLOSE from FIN_WAIT2 hands an orphan to a
// time-wait socket in its FIN_WAIT2 substate: without the peer's FIN
// (the kernel sets SOCK_DONE only for it), error or reset; with fentry,
// when tcp_time_wait said so.
func (b *Builder) orphanClose(r *slot, e *probe.Event) bool {
	if r.State != probe.StateFinWait2 || e.SkErr != 0 || r.is(fResetSent) || r.is(fResetReceived) {
		return false
	}
	if b.cfg.ExactTimeWait {
		return e.Flags&probe.FlagTimeWait != 0 && e.Flags&probe.FlagTWFinWait2 != 0
	}
	return e.Flags&probe.FlagFinReceived == 0
}

// addOrphan registers a candidate at its CLOSE, so that its peer and
// dumps find it while it waits out its reset hold.
func (b *Builder) addOrphan(i int32, ts uint64) {
	r := b.rec(i)
	b.closingOf(r).orphanAt = ts
	k := recordKey(r)
	if old, ok := b.orphans[k]; ok && old != i && sameAsTWSeed(b.rec(old), r) {
		// The dump that seeded it listed this connection's own time-wait
		// socket before its CLOSE was applied (seed_timewait.go).
		b.dropTWSeed(old, r)
	} else if ok && old != i && b.rec(old).is(fOrphan) {
		// The kernel cannot hold two time-wait sockets of one tuple: the
		// older one is gone.
		b.orphanDied(old, ts)
	}
	b.orphans[k] = i
	f := k.flow()
	if j, ok := b.orphanFlows[f]; ok && j != i {
		b.orphanFlows[f] = -1 // in two namespaces: the flow names neither
	} else {
		b.orphanFlows[f] = i
	}
}

// becomeOrphan: a candidate whose reset hold passed without a reset is
// an orphan in FIN_WAIT2, open again until its end is known.
func (b *Builder) becomeOrphan(i int32) {
	r := b.rec(i)
	r.set(fOrphan, true)
	b.lruPush(i)
	if b.cl(r).finAt != 0 {
		at := b.cl(r).finAt
		b.closingOf(r).finAt = 0
		b.orphanFin(i, at) // into TIME_WAIT: conclude applies what fentry told
		return
	}
	if len(b.twGone) > 0 {
		b.applyTWGone(i)
	}
}

// dropOrphan forgets a candidate's or an orphan's indexes.
func (b *Builder) dropOrphan(i int32) {
	r := b.rec(i)
	if b.cl(r).orphanAt == 0 {
		return
	}
	k := recordKey(r)
	if b.orphans[k] == i {
		delete(b.orphans, k)
	}
	f := k.flow()
	switch b.orphanFlows[f] {
	case i:
		delete(b.orphanFlows, f)
	case -1:
		// Ambiguous: the flow names one again when only one is left.
		delete(b.orphanFlows, f)
		n, last := 0, int32(-1)
		for ok, j := range b.orphans {
			if ok.flow() == f {
				n, last = n+1, j
			}
		}
		switch {
		case n == 1:
			b.orphanFlows[f] = last
		case n > 1:
			b.orphanFlows[f] = -1
		}
	}
}

// leaveFinWait2 ends an orphan's FIN_WAIT2 at ts: it is closed now.
func (b *Builder) leaveFinWait2(i int32, ts uint64) {
	r := b.rec(i)
	if ts < b.cl(r).orphanAt {
		ts = b.cl(r).orphanAt
	}
	b.dropOrphan(i)
	b.closedDuringDump(r)
	if r.is(fOrphan) {
		b.lruRemove(i)
	}
	if r.NSpan > 0 {
		b.setExit(i, r, ts)
	}
	b.uncount(i, r)
	r.State = probe.StateClose
	r.End = ts
	b.closingOf(r).orphanAt = 0
	r.set(fOrphan, false)
}

// orphanFin: the peer's FIN reached the orphan's time-wait socket at ts;
// it is in TIME_WAIT from then.
func (b *Builder) orphanFin(i int32, ts uint64) {
	r := b.rec(i)
	if !r.is(fOrphan) {
		// Still waiting out its reset hold: closeRecord decides then.
		if b.cl(r).finAt == 0 || ts < b.cl(r).finAt {
			b.closingOf(r).finAt = ts
		}
		return
	}
	b.leaveFinWait2(i, ts)
	r.TimeWait = TWPending
	b.conclude(i)
}

// orphanEnded: the orphan's time-wait socket went at ts without the
// peer's FIN, its close of this kind.
func (b *Builder) orphanEnded(i int32, ts uint64, kind Kind) {
	r := b.rec(i)
	if !r.is(fOrphan) {
		return // in its reset hold: its peer and dumps come later
	}
	b.leaveFinWait2(i, ts)
	r.endKind = kind
	b.conclude(i)
}

// orphanDied: gone at ts, by its timer when that was due, else killed
// early (by a RST either way) before ts.
func (b *Builder) orphanDied(i int32, ts uint64) {
	r := b.rec(i)
	// A dump's timer is exact (the kernel's timers never fire early);
	// one assumed from tcp_fin_timeout is given the grace.
	death, slack := b.cl(r).twExpected, uint64(0)
	if death == 0 {
		death, slack = b.cl(r).orphanAt+b.orphanLeft(r.NetNS), orphanGrace
	}
	if death <= ts+slack {
		b.orphanEnded(i, min(death, ts), KindFinWait2Timeout)
		return
	}
	b.orphanEnded(i, ts, KindFinWait2Aborted)
}

// peerOrphan finds the orphan at the other end of r, a record in netns with
// r's key: in the same namespace first (loopback), else in the one
// namespace whose orphan has the reversed endpoints.
func (b *Builder) peerOrphan(r *slot) (int32, bool) {
	if len(b.orphans) == 0 {
		return 0, false
	}
	k := recordKey(r)
	if i, ok := b.orphans[k.reversed(k.netns)]; ok {
		return i, true
	}
	if i, ok := b.orphanFlows[k.reversed(0).flow()]; ok && i >= 0 {
		return i, true
	}
	return 0, false
}

// peerClosed: r, the end that got our FIN, closed; when its peer is one
// of our orphans, r's close tells how the orphan's FIN_WAIT2 ended.
func (b *Builder) peerClosed(r *slot) {
	if !r.is(fSawCloseWait) || r.Role == RoleListener {
		return
	}
	i, ok := b.peerOrphan(r)
	if !ok {
		return
	}
	o := b.rec(i)
	// The same connection: the orphan's FIN came before the peer went to
	// CLOSE_WAIT.
	if fw1, cw := b.spanEnter(o, probe.StateFinWait1), b.spanEnter(r, probe.StateCloseWait); fw1 != 0 && cw != 0 && cw < fw1 {
		return
	}
	switch r.Kind {
	case KindGraceful:
		// Its FIN was acknowledged: our time-wait socket took it, as the
		// peer sent it on entering LAST_ACK.
		at := b.spanEnter(r, probe.StateLastAck)
		if at == 0 {
			at = r.End
		}
		b.orphanFin(i, at)
	case KindResetReceived:
		// Data after our close: our time-wait socket answers with a RST
		// and goes.
		b.orphanEnded(i, r.End, KindResetSent)
	case KindResetSent:
		b.orphanEnded(i, r.End, KindResetReceived)
	}
}

// spanEnter is when r last entered state s, 0 when unknown or never.
func (b *Builder) spanEnter(r *slot, s probe.State) uint64 {
	for j := int(r.NSpan) - 1; j >= 0; j-- {
		if r.spanState[j] == s {
			return b.enterOf(r, j)
		}
	}
	return 0
}

// observeOrphan takes a dump's time-wait socket of an orphan: still in
// FIN_WAIT2, its timer is its death; in TIME_WAIT, the peer's FIN came
// TimeWaitLen before its timer's end.
func (b *Builder) observeOrphan(i int32, s *Socket) {
	r := b.rec(i)
	end := s.Time + uint64(s.ExpiresMs)*1_000_000
	if s.State != probe.StateTimeWait {
		b.twListed(r, s.Time, end)
		return
	}
	fin := s.Time
	if end > TimeWaitLen && end-TimeWaitLen < fin {
		fin = end - TimeWaitLen
	}
	b.orphanFin(i, max(fin, b.spanEnter(r, probe.StateFinWait2)))
	if r.TimeWait == TWPending {
		b.twListed(r, s.Time, end)
	}
}

// orphanDumpDone ends the orphans of a namespace a complete time-wait
// dump no longer lists.
func (b *Builder) orphanDumpDone(netns uint32, time uint64) {
	gone := b.pick(b.orphans, func(r *slot) bool {
		return r.is(fOrphan) && r.NetNS == netns && b.cl(r).twSeen < time && b.cl(r).orphanAt+dumpMargin <= time
	})
	for _, i := range gone {
		b.orphanDied(i, time)
	}
}

// orphanTWEnd: fentry saw the orphan's time-wait socket go, in substate.
func (b *Builder) orphanTWEnd(i int32, ts uint64, substate probe.State) {
	if substate == probe.StateTimeWait {
		// Its FIN came unseen, at the latest TimeWaitLen before.
		r := b.rec(i)
		fin := max(b.cl(r).orphanAt, ts-min(ts, TimeWaitLen))
		b.orphanFin(i, fin)
		b.timeWaitEnded(recordKey(r), ts, TWExact)
		return
	}
	b.orphanDied(i, ts)
}

// assumeOrphanEnds ends the orphans whose death no observation can tell:
// no dump sees their namespace (or none lately), and their timer is past.
func (b *Builder) assumeOrphanEnds(now uint64) {
	if len(b.orphans) == 0 {
		return
	}
	due := b.pick(b.orphans, func(r *slot) bool {
		if !r.is(fOrphan) || now < b.orphanDeath(r)+orphanGrace {
			return false
		}
		// Where sock_diag sees the netns (lately), its dumps decide.
		polled, ok := b.twPolled[r.NetNS]
		return !ok || polled <= b.cl(r).orphanAt || now >= polled+orphanDumpStale
	})
	for _, i := range due {
		b.orphanEnded(i, b.orphanDeath(b.rec(i)), KindFinWait2Timeout)
	}
}

// orphanDeath is when an orphan's time-wait socket is to die: its timer
// as a dump read it, else tcp_fin_timeout after its CLOSE.
func (b *Builder) orphanDeath(r *slot) uint64 {
	if b.cl(r).twExpected != 0 {
		return b.cl(r).twExpected
	}
	return b.cl(r).orphanAt + b.orphanLeft(r.NetNS)
}

// OrphanCount is how many records are orphans in FIN_WAIT2 now.
func (b *Builder) OrphanCount() int { return len(b.orphans) }
