package session_test

import (
	"bytes"
	"os"
	"reflect"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
	"github.com/tcpfsm/tcpfsm/tracer/session"
	"github.com/tcpfsm/tcpfsm/tracer/sockdiag"
)

// kernelCounts is what sock_diag lists in the namespace, by state (a
// time-wait socket by its substate), and the total.
func kernelCounts(t *testing.T, ns *nettest.NS) (map[probe.State]int, int) {
	t.Helper()
	d, err := sockdiag.OpenInNetNS(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	m, n := map[probe.State]int{}, 0
	if err := d.Dump(sockdiag.AllStates, func(s *sockdiag.Socket) error {
		m[probe.State(s.State)]++
		n++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return m, n
}

func builderCounts(b *lifecycle.Builder) (map[probe.State]int, int) {
	m := map[probe.State]int{}
	for st := probe.StateEstablished; st <= probe.MaxState; st++ {
		if n := b.StateCount(st); n != 0 {
			m[st] = n
		}
	}
	return m, b.Tracked()
}

func sameCounts(a, b map[probe.State]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Events lost for real (a one-page ring buffer nobody reads during a
// burst): connections that closed unseen and others that opened unseen.
// The reconciliation that follows the loss makes the gauges equal the
// kernel's exactly, counts its repairs, and a replay of the recording
// repairs the same records the same way.
func TestReconcileAfterLoss(t *testing.T) {
	requireSS(t)
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	const closing, opening = 40, 60
	old := openPairs(t, ns, ln, closing) // before the session: seeded

	c, err := clock.Now()
	if err != nil {
		t.Fatal(err)
	}
	var rec bytes.Buffer
	w, err := recording.NewWriter(&rec, recording.Header{EventSize: uint16(probe.EventSize), BootNs: c.BootNs, Created: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	col := &collector{}
	s, err := session.Open(session.Options{
		Probe:      probe.Options{Filter: probe.Filter{NetNS: ns.Inode}, RingBufferSize: 4096},
		Handler:    col,
		NetNSPaths: map[uint32]string{ns.Inode: ns.Path()},
		Reconcile:  time.Minute, // only the one the loss brings forward
		Record:     w,
		Clock:      c,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var st lifecycle.Stats
	s.With(func(b *lifecycle.Builder) { st = b.Stats() })
	if st.Seeded != 2*closing+1 {
		t.Fatalf("seeded %d, want %d", st.Seeded, 2*closing+1)
	}

	// Nothing reads: the old pairs reset, new ones open; a page of ring
	// holds 28 events of the 8 a reset pair makes and 4 an opened one.
	for _, c := range old {
		if err := c.SetLinger(0); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	held := openPairs(t, ns, ln, opening)
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	done := make(chan error, 1)
	go func() { done <- s.Run() }()

	deadline := time.Now().Add(15 * time.Second)
	var k, g map[probe.State]int
	var kn, gn int
	for {
		s.With(func(b *lifecycle.Builder) { st = b.Stats(); g, gn = builderCounts(b) })
		k, kn = kernelCounts(t, ns)
		if st.Reconciliations >= 1 && sameCounts(g, k) && gn == kn {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d reconciliations: the builder's %v (%d), the kernel's %v (%d); repairs %v",
				st.Reconciliations, g, gn, k, kn, st.Reconciled)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// And ss, the user's check, at the same moment (the scene is still).
	if sn, snn := kernelView(t, ns); !sameCounts(g, sn) || gn != snn {
		t.Errorf("the builder's %v (%d), ss %v (%d)", g, gn, sn, snn)
	}
	lost, _ := s.Probe().Lost()
	if lost.Total() == 0 || st.Reconciled[lifecycle.ReconcileSeeded] == 0 || st.Reconciled[lifecycle.ReconcileEnded] == 0 {
		t.Errorf("lost %+v; repairs %v: want events lost, records seeded and ended", lost, st.Reconciled)
	}
	t.Logf("lost %d events; the kernel %v; repairs seeded %d, ended %d, corrected %d", lost.Total(), k,
		st.Reconciled[0], st.Reconciled[1], st.Reconciled[2])
	if k[probe.StateEstablished] != 2*opening || k[probe.StateListen] != 1 {
		t.Errorf("the scene: %v", k)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	_, live := col.get()
	unobserved := 0
	for i := range live {
		if live[i].Kind == lifecycle.KindUnobserved {
			unobserved++
			if live[i].Anomalies&lifecycle.AnomalyEventsLost == 0 || live[i].End == 0 {
				t.Errorf("unobserved record %+v", live[i])
			}
		}
	}
	if unobserved != int(st.Reconciled[lifecycle.ReconcileEnded]) {
		t.Errorf("%d unobserved records, %d ended", unobserved, st.Reconciled[lifecycle.ReconcileEnded])
	}
	// The sockets the reconciliation seeded (opened unseen, both ends
	// this process's) have their owner, read from /proc as at start.
	owned := 0
	for i := range live {
		r := &live[i]
		if !r.Seeded || r.Anomalies&lifecycle.AnomalyEventsLost == 0 || r.Kind != lifecycle.KindOpen {
			continue
		}
		owned++
		if !r.OwnerKnown() || r.Pid != uint32(os.Getpid()) || string(r.CommBytes()) != selfComm() || r.Owner != probe.OwnerTask {
			t.Errorf("seeded by the reconciliation, owner %d %q (%s): %+v", r.Pid, r.CommBytes(), r.Owner, *r)
		}
	}
	if owned != int(st.Reconciled[lifecycle.ReconcileSeeded]) {
		t.Errorf("%d open records seeded by the reconciliation, %d seeded", owned, st.Reconciled[lifecycle.ReconcileSeeded])
	}

	// The replay: the same records, in the same order.
	rd, err := recording.NewReader(bytes.NewReader(rec.Bytes()), probe.EventSize)
	if err != nil {
		t.Fatal(err)
	}
	rc := &collector{}
	res, err := session.Replay(rd, session.ReplayOptions{Handler: rc})
	if err != nil {
		t.Fatal(err)
	}
	_, replayed := rc.get()
	if len(replayed) != len(live) || !reflect.DeepEqual(replayed, live) {
		t.Errorf("replay: %d records, live %d; differ", len(replayed), len(live))
		for i := range min(len(live), len(replayed)) {
			if !reflect.DeepEqual(live[i], replayed[i]) {
				t.Errorf("first difference at %d:\n live   %+v\n replay %+v", i, live[i], replayed[i])
				break
			}
		}
	}
	if res.Stats.Reconciled != st.Reconciled || res.Stats.Reconciliations < 1 {
		t.Errorf("replay repairs %v, live %v", res.Stats.Reconciled, st.Reconciled)
	}
}

// cpuNow is the process's user+system CPU time.
func cpuNow(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// The cost of one reconciliation at scale, measured for BENCHMARKS.md:
// TCPFSM_RECONCILE_PAIRS=50000 for 100,000 sockets, held by helper
// processes; skipped without it.
func TestReconcileCost(t *testing.T) {
	pairs, _ := strconv.Atoi(os.Getenv("TCPFSM_RECONCILE_PAIRS"))
	if pairs <= 0 {
		t.Skip("a measurement: set TCPFSM_RECONCILE_PAIRS")
	}
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	const per = 5000
	for left := pairs; left > 0; left -= per {
		n := min(left, per)
		h := ns.StartHelper(t, nettest.Helper{Comm: "rcsrv", Role: "holder", Network: "tcp4", Addr: "127.0.0.1:0", Send: n})
		port := h.Port(t)
		d := ns.StartHelper(t, nettest.Helper{Comm: "rccli", Role: "dialer", Network: "tcp4",
			Addr: "127.0.0.1:" + strconv.Itoa(port), Send: n})
		d.Line(t)
		h.Line(t)
	}
	_, kn := kernelCounts(t, ns)

	// sock_diag alone: one dump of every socket.
	c0, w0 := cpuNow(t), time.Now()
	kernelCounts(t, ns)
	dumpWall, dumpCPU := time.Since(w0), cpuNow(t)-c0

	// The session's whole reconciliation: dump on the reconciler's
	// goroutine, chunks applied between drains; no traffic meanwhile.
	l := startSession(t, ns, session.Options{Reconcile: session.MinReconcile, Lifecycle: lifecycle.Config{MaxTracked: 4 * pairs}})
	var st lifecycle.Stats
	for st.Reconciliations == 0 {
		l.s.With(func(b *lifecycle.Builder) { st = b.Stats() })
		time.Sleep(time.Millisecond)
	}
	c1, w1 := cpuNow(t), time.Now()
	for st.Reconciliations < 2 {
		l.s.With(func(b *lifecycle.Builder) { st = b.Stats() })
		time.Sleep(time.Millisecond)
	}
	// From the first's end to the second's: one interval, then one
	// reconciliation; the idle interval costs next to nothing.
	wall, cpu := time.Since(w1)-session.MinReconcile, cpuNow(t)-c1
	var g map[probe.State]int
	var gn int
	l.s.With(func(b *lifecycle.Builder) { g, gn = builderCounts(b) })
	t.Logf("%d sockets: sock_diag dump %v wall, %v CPU; reconciliation about %v wall, %v CPU (the test's polling included); repairs %v; tracked %d %v",
		kn, dumpWall.Round(time.Millisecond), dumpCPU.Round(time.Millisecond), wall.Round(time.Millisecond),
		cpu.Round(time.Millisecond), st.Reconciled, gn, g)
	if gn != kn {
		t.Errorf("tracked %d, the kernel %d", gn, kn)
	}
}

// The cost of the owners a reconciliation reads for the sockets it
// seeds, measured for BENCHMARKS.md: without the snapshot at start, the
// first reconciliation seeds every socket, reading their owners from
// /proc; the second, the same sockets all held, reads none. Side by side
// in one run. TCPFSM_RECONCILE_PAIRS=25000 for 50,000 sockets; skipped
// without it.
func TestReconcileSeedOwnersCost(t *testing.T) {
	pairs, _ := strconv.Atoi(os.Getenv("TCPFSM_RECONCILE_PAIRS"))
	if pairs <= 0 {
		t.Skip("a measurement: set TCPFSM_RECONCILE_PAIRS")
	}
	nettest.RequireBPF(t)
	ns := nettest.NewNS(t)
	const per = 5000
	for left := pairs; left > 0; left -= per {
		n := min(left, per)
		h := ns.StartHelper(t, nettest.Helper{Comm: "rcsrv", Role: "holder", Network: "tcp4", Addr: "127.0.0.1:0", Send: n})
		port := h.Port(t)
		d := ns.StartHelper(t, nettest.Helper{Comm: "rccli", Role: "dialer", Network: "tcp4",
			Addr: "127.0.0.1:" + strconv.Itoa(port), Send: n})
		d.Line(t)
		h.Line(t)
	}
	_, kn := kernelCounts(t, ns)
	// The parts alone: one dump, and one /proc scan for every inode.
	d, err := sockdiag.OpenInNetNS(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[uint32]struct{}{}
	w := time.Now()
	if err := d.Dump(sockdiag.AllStates, func(s *sockdiag.Socket) error {
		inodes[s.Inode] = struct{}{}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	dump := time.Since(w)
	d.Close()
	w = time.Now()
	found, err := sockdiag.Owners(inodes)
	if err != nil {
		t.Fatal(err)
	}
	scan := time.Since(w)

	l := startSession(t, ns, session.Options{NoSnapshot: true, Reconcile: session.MinReconcile,
		Lifecycle: lifecycle.Config{MaxTracked: 4 * pairs}})
	w0 := time.Now() // the reconciler's interval began as Open returned
	var st lifecycle.Stats
	for st.Reconciliations == 0 {
		l.s.With(func(b *lifecycle.Builder) { st = b.Stats() })
		time.Sleep(time.Millisecond)
	}
	first := time.Since(w0) - session.MinReconcile // the interval before it, less
	w1 := time.Now()
	for st.Reconciliations < 2 {
		l.s.With(func(b *lifecycle.Builder) { st = b.Stats() })
		time.Sleep(time.Millisecond)
	}
	second := time.Since(w1) - session.MinReconcile
	owned, gn := 0, 0
	l.s.With(func(b *lifecycle.Builder) {
		gn = b.Tracked()
		for r := range b.Open() {
			if r.OwnerKnown() {
				owned++
			}
		}
	})
	t.Logf("%d sockets: sock_diag dump %v, /proc owner scan %v (%d found); the reconciliation seeding them with owners about %v, the next (none to seed) %v: %.1fx; %d of %d seeded with an owner",
		kn, dump.Round(time.Millisecond), scan.Round(time.Millisecond), len(found), first.Round(time.Millisecond),
		second.Round(time.Millisecond), float64(first)/float64(second), owned, st.Seeded)
	if gn != kn || int(st.Reconciled[lifecycle.ReconcileSeeded]) != kn || owned != kn {
		t.Errorf("tracked %d, seeded %d, with an owner %d; the kernel %d", gn, st.Reconciled[lifecycle.ReconcileSeeded], owned, kn)
	}
}
