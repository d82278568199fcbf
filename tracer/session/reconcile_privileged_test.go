package session_test

import (
	"bytes"
	"reflect"
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
		c.SetLinger(0)
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
	lost, _ := s.Probe().Lost()
	if lost.Total() == 0 || st.Reconciled[lifecycle.ReconcileSeeded] == 0 || st.Reconciled[lifecycle.ReconcileEnded] == 0 {
		t.Errorf("lost %+v; repairs %v: want events lost, records seeded and ended", lost, st.Reconciled)
	}
	t.Logf("lost %d events; the kernel %v; repairs seeded %d, ended %d, corrected %d", lost.Total(), k,
		st.Reconciled[0], st.Reconciled[1], st.Reconciled[2])
	if k[probe.StateEstablished] != 2*opening || k[probe.StateListen] != 1 {
		t.Errorf("the scene: %v", k)
	}
	s.Stop()
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

