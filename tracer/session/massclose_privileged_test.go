package session_test

import (
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

// ssState is the state ss prints for each state tcpfsm's gauges count.
var ssState = map[probe.State]string{
	probe.StateEstablished: "ESTAB", probe.StateSynSent: "SYN-SENT", probe.StateSynRecv: "SYN-RECV",
	probe.StateFinWait1: "FIN-WAIT-1", probe.StateFinWait2: "FIN-WAIT-2", probe.StateTimeWait: "TIME-WAIT",
	probe.StateCloseWait: "CLOSE-WAIT", probe.StateLastAck: "LAST-ACK", probe.StateListen: "LISTEN",
	probe.StateClosing: "CLOSING",
}

// massPairs is how many connection pairs TestMassGracefulClose makes:
// 24,000 (the issue's), 8,000 per client process, unless
// TCPFSM_MASS_PAIRS says otherwise.
func massPairs(t *testing.T) (procs, perProc int) {
	procs, perProc = 3, 8000
	if s := os.Getenv("TCPFSM_MASS_PAIRS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < procs {
			t.Fatalf("TCPFSM_MASS_PAIRS=%q: want a number of pairs, at least %d", s, procs)
		}
		perProc = n / procs
	}
	return procs, perProc
}

type eventLog struct {
	mu     sync.Mutex
	events []probe.Event
}

func (l *eventLog) add(e *probe.Event) {
	l.mu.Lock()
	l.events = append(l.events, *e)
	l.mu.Unlock()
}

func (l *eventLog) get() []probe.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

// 24,000 client processes' sockets closed at once by killing their
// processes; the servers close theirs at each EOF. A close() in process
// context, interrupted by the softirq that changes the state of dozens of
// other sockets on the same CPU, used to lose those transitions
// (program_busy): now nothing is lost for any reason, every connection
// has its whole life, and the gauges equal ss at the end.
//
// What tcpfsm received is compared with what the kernel made, counted by
// a second program on the same tracepoint (nettest.KernelCount), not with
// "10 events a pair": the kernel now and then moves a socket from
// FIN_WAIT1 to FIN_WAIT2 without a call on the tracepoint (seen for
// half-closed sockets: the kernel's own count of FIN_WAIT1->FIN_WAIT2 was
// 5 short of its FIN_WAIT2->CLOSE), and nothing can report that.
func TestMassGracefulClose(t *testing.T) {
	nettest.RequireBPF(t)
	procs, perProc := massPairs(t)
	ns := nettest.NewNS(t)
	kernel := ns.CountKernel(t)
	log := &eventLog{}
	// Room for the whole close (10 events a pair) if the reader stalls.
	l := startSession(t, ns, session.Options{
		Probe:      probe.Options{RingBufferSize: 64 << 20},
		OnEvent:    log.add,
		NoSnapshot: true,
	})
	opened := time.Now()
	m := ns.StartMass(t, procs, perProc)
	pairs := m.Pairs()
	t.Logf("%d pairs established in %v", pairs, time.Since(opened).Round(time.Millisecond))
	start := time.Now()
	m.CloseClients(t)
	t.Logf("%d pairs closed in %v", pairs, time.Since(start).Round(time.Millisecond))
	// CloseClients has waited for the servers' exits.

	// The kernel is done when the namespace holds nothing but TIME_WAIT
	// sockets. Usually 1-2 s after the kill; but seen once in 30 runs: a
	// server's FIN that the client's time-wait socket (FIN_WAIT2
	// substate) did not take, retransmitted from LAST_ACK until that
	// time-wait socket expired (60 s) and the next retransmit was answered
	// by a reset. Bounded by TCP_TIMEWAIT_LEN and the retransmit backoff.
	var ss map[string]int
	waitUntil(t, 150*time.Second, "the kernel's close of every socket", func() bool {
		ss = ns.SSStates(t)
		return len(ss) == 0 || (len(ss) == 1 && ss["TIME-WAIT"] > 0)
	})
	t.Logf("kernel done %v after the kill: ss %v", time.Since(start).Round(time.Millisecond), ss)

	// Then every transition the kernel made reaches user space (the
	// ring buffer may still hold some), or is counted lost.
	var made map[string]uint64
	var kernelMisses uint64
	var got map[string]uint64
	var ev []probe.Event
	var lost probe.LostCounts
	received := func() bool {
		var err error
		if made, kernelMisses, err = kernel.Transitions(); err != nil {
			t.Fatal(err)
		}
		if lost, err = l.s.Probe().Lost(); err != nil {
			t.Fatal(err)
		}
		ev = log.get()
		got = map[string]uint64{}
		for i := range ev {
			if ev[i].EventType() == probe.TypeState {
				got[nettest.Transition(&ev[i])]++
			}
		}
		return sum(got)+lost.Total() >= sum(made)
	}
	if within := nettest.Slow(10 * time.Second); !eventually(within, received) {
		t.Errorf("after %v: received %d state events + lost %d, the kernel made %d", within, sum(got), lost.Total(), sum(made))
	}
	t.Logf("the kernel made %d transitions (%d expected from the scenario, 10 a pair and 2 a listener), its counter skipped %d; tcpfsm received %d",
		sum(made), 10*pairs+2*procs, kernelMisses, sum(got))
	// Exact unless the kernel's counter was skipped itself (it runs
	// nested in nothing but itself): then it is short by at most that.
	for k, n := range made {
		if got[k] > n+kernelMisses || (lost.Total() == 0 && got[k] < n) {
			t.Errorf("%s: the kernel made %d, tcpfsm received %d (lost %d, kernel counter skipped %d)", k, n, got[k], lost.Total(), kernelMisses)
		}
	}
	for k, n := range got {
		if made[k] == 0 {
			t.Errorf("%s: tcpfsm received %d, the kernel made none", k, n)
		}
	}

	nest, err := l.s.Probe().Nest()
	if err != nil {
		t.Fatal(err)
	}
	progs, _ := l.s.Probe().Stats()
	t.Logf("lost %+v; nested instance: attached %v, handled %d of the main program's %d recursion misses", lost, nest.Attached, nest.Handled, nest.MainMisses)
	for _, p := range progs {
		if p.RecursionMisses > 0 {
			t.Logf("program %s: %d recursion misses", p.Name, p.RecursionMisses)
		}
	}
	if lost.Total() != 0 {
		t.Errorf("lost %+v, want nothing lost", lost)
	}
	if nest.MainMisses != nest.Handled+lost.Recursion-othersMisses(progs) {
		t.Errorf("main program's misses %d != nested runs %d + lost to recursion %d (less the other programs' %d)",
			nest.MainMisses, nest.Handled, lost.Recursion, othersMisses(progs))
	}

	// Every connection's whole life, in order, as far as the kernel told
	// it: a client whose FIN_WAIT1->FIN_WAIT2 the kernel did not report
	// (its count is short of ESTABLISHED->FIN_WAIT1's) goes on from
	// FIN_WAIT1 with FIN_WAIT2->CLOSE, and exactly that many do.
	clientLife := []string{"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE"}
	untoldLife := []string{"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT2->CLOSE"}
	serverLife := []string{"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE"}
	listenerLife := []string{"CLOSE->LISTEN", "LISTEN->CLOSE"}
	untold := int(made["ESTABLISHED->FIN_WAIT1"]) - int(made["FIN_WAIT1->FIN_WAIT2"])
	partial := 0
	for i := range ev {
		if ev[i].Partial() {
			partial++
		}
	}
	if partial != 0 {
		t.Errorf("%d events flagged partial: the kernel's per-socket table lost their connections' entries", partial)
	}
	var clients, untoldClients, servers, listeners, wrong, twEnds int
	untoldIDs := map[uint64]bool{}
	for _, c := range nettest.Conns(ev) {
		got := c.Transitions()
		if c.ID == 0 && len(got) == 0 {
			// Time-wait sockets have no connection id: where the kernel
			// has trampolines (the 6.1 and 6.12 VMs), inet_twsk_kill
			// reports the TIME_WAITs it ends early, and in the 6.1 VM
			// hundreds were (ss counted 23,133 TIME-WAIT of 24,000
			// while the kernel sent 916 resets); the host reports none.
			// Nothing else may come without an id.
			for i := range c.Events {
				if c.Events[i].EventType() != probe.TypeTimeWaitEnd {
					t.Errorf("an event without a connection id: %s", nettest.Dump(c.Events[i:i+1]))
				}
			}
			twEnds = len(c.Events)
			continue
		}
		switch {
		case slices.Equal(got, clientLife):
			clients++
		case slices.Equal(got, untoldLife):
			untoldIDs[c.ID] = true
			if untoldClients++; untoldClients <= 3 {
				t.Logf("connection %d: the kernel did not report FIN_WAIT1->FIN_WAIT2\n%s", c.ID, nettest.Dump(c.Events))
			}
		case slices.Equal(got, serverLife):
			servers++
		case slices.Equal(got, listenerLife):
			listeners++
		default:
			if wrong++; wrong <= 3 {
				t.Errorf("connection %d: %v\n%s", c.ID, got, nettest.Dump(c.Events))
			}
		}
	}
	// (Each of the kernel's two counts is short by at most the counter's
	// skips.)
	if twEnds > pairs {
		t.Errorf("%d TIME_WAITs ended early, more than the %d clients", twEnds, pairs)
	} else if twEnds > 0 {
		t.Logf("%d TIME_WAITs ended early (inet_twsk_kill)", twEnds)
	}
	if clients+untoldClients != pairs || untoldClients < untold-int(kernelMisses) || untoldClients > untold+int(kernelMisses) ||
		servers != pairs || listeners != procs || wrong != 0 {
		t.Errorf("%d whole client lives + %d without FIN_WAIT1->FIN_WAIT2, %d server lives, %d listeners, %d other; want %d, of which %d±%d without (the kernel's count), %d, %d, 0",
			clients, untoldClients, servers, listeners, wrong, pairs, untold, kernelMisses, pairs, procs)
	}
	closed := l.waitClosedN(t, 2*pairs, nettest.Slow(10*time.Second))

	// The records: each closed gracefully, none flagged but those the
	// kernel told a state short (their gap is the kernel's), and none
	// reset but as many as the kernel reset.
	resetsIn, resetsOut, err := kernel.Resets()
	if err != nil {
		t.Fatal(err)
	}
	var flagged, resetReceived, resetSent int
	for i := range closed {
		r := &closed[i]
		switch {
		case r.Kind == lifecycle.KindResetReceived && r.Anomalies == 0:
			resetReceived++
		case r.Kind == lifecycle.KindResetSent && r.Anomalies == 0:
			resetSent++
		case r.Kind == lifecycle.KindGraceful && (r.Anomalies == 0 || untoldIDs[r.ID]):
		default:
			if flagged++; flagged <= 5 {
				t.Errorf("record %d: kind %s, anomalies %v", r.ID, r.Kind, r.Anomalies)
			}
		}
	}
	if flagged != 0 {
		t.Errorf("%d of %d records not graceful or flagged", flagged, len(closed))
	}
	if uint64(resetReceived) != resetsIn || uint64(resetSent) > resetsOut {
		t.Errorf("%d records reset_received, %d reset_sent; the kernel received %d resets and sent %d", resetReceived, resetSent, resetsIn, resetsOut)
	}
	if resetsIn+resetsOut > 0 {
		t.Logf("the kernel received %d resets and sent %d: %d records reset_received, %d reset_sent", resetsIn, resetsOut, resetReceived, resetSent)
	}

	// The gauges and the tracked count equal ss's, within a few TIME_WAIT
	// polls (sock_diag tells the reconstructed TIME_WAITs' ends).
	var gauges [probe.MaxState + 1]int
	var tracked, total int
	equal := func() bool {
		ss = ns.SSStates(t)
		total = 0
		for _, n := range ss {
			total += n
		}
		l.s.With(func(b *lifecycle.Builder) {
			for st := range ssState {
				gauges[st] = b.StateCount(st)
			}
			tracked = b.Tracked()
		})
		for st, name := range ssState {
			if gauges[st] != ss[name] {
				return false
			}
		}
		return tracked == total
	}
	deadline := time.Now().Add(5 * session.DefaultTimeWaitPoll)
	for !equal() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	for st, name := range ssState {
		if gauges[st] != ss[name] {
			t.Errorf("tcpfsm counts %d %s, ss %d", gauges[st], st, ss[name])
		}
	}
	if tracked != total {
		t.Errorf("tcpfsm tracks %d, ss shows %d sockets: %v", tracked, total, ss)
	}
	// Where fentry tells TIME_WAIT's ends, it told each of those the
	// kernel ended early, most of them within milliseconds of their
	// CLOSE (a reset), while the records waited out their reset hold:
	// none was left to the dumps that watch for the ends it misses.
	if l.s.Probe().Features().TimeWait {
		_, finished := l.col.get()
		var exact, dumped int
		for _, r := range finished {
			switch r.TimeWait {
			case lifecycle.TWExact:
				exact++
			case lifecycle.TWSockDiag:
				dumped++
			}
		}
		t.Logf("TIME_WAITs ended: %d told by fentry, %d by sock_diag's dumps", exact, dumped)
		if dumped != 0 {
			t.Errorf("%d TIME_WAITs ended by sock_diag's dumps: fentry did not tell their ends", dumped)
		}
	}
	t.Logf("ss at the end: %v", ss)
}

func sum(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// othersMisses are the recursion misses of the programs that have no
// nested instance, all lost.
func othersMisses(progs []probe.ProgramStats) uint64 {
	var n uint64
	for _, p := range progs {
		if p.Name != "raw_inet_sock_set_state" && p.Name != "raw_nested_inet_sock_set_state" {
			n += p.RecursionMisses
		}
	}
	return n
}

// waitClosedN waits until n connections (listeners aside) closed.
func (l *live) waitClosedN(t *testing.T, n int, within time.Duration) []lifecycle.Record {
	t.Helper()
	var closed []lifecycle.Record
	if !eventually(within, func() bool {
		closed, _ = l.col.get()
		closed = connections(closed)
		return len(closed) >= n
	}) {
		t.Errorf("%d connections closed within %v, want %d", len(closed), within, n)
	}
	return closed
}

func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	if !eventually(within, cond) {
		t.Fatalf("%s: not within %v", what, within)
	}
}

func eventually(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}
