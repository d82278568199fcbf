package session

import (
	"slices"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

// A reconciliation's sockets go to the builder only after the events the
// kernel submitted before the dump read them. The reader emptied the ring,
// a client closed (its ESTABLISHED -> FIN_WAIT1 event waits in the ring,
// unread), the dump listed the socket in FIN_WAIT1 and its chunk arrived,
// all before the drain looked for chunks: applied then, the chunk would
// correct the record to FIN_WAIT1, and the event read next would enter
// FIN_WAIT1 a second time. A chunk taken in one drain is applied in the
// next, after everything read in between.
func TestReconcileChunkAfterTheEventsBeforeIt(t *testing.T) {
	var h lastFinished
	s := &Session{in: newIngest(&h, lifecycle.Config{}, nil)}
	const (
		netns        = 7
		sport, dport = 40000, 5000
		id           = 1 << 12
		dumpAt       = 5_000_000_000
	)
	event := func(ts uint64, old, nw probe.State) {
		t.Helper()
		s.ev = recording.Input{Kind: recording.KindEvent, Event: probe.Event{ConnId: id, Family: probe.AFInet,
			Type: uint8(probe.TypeState), TsNs: ts, Netns: netns, Sport: sport, Dport: dport,
			Oldstate: uint8(old), Newstate: uint8(nw), Owner: uint8(probe.OwnerTask), Pid: 42}}
		if err := s.input(&s.ev); err != nil {
			t.Fatal(err)
		}
	}
	drain := func() {
		t.Helper()
		if err := s.reconcile(); err != nil {
			t.Fatal(err)
		}
	}
	event(1_000_000_000, probe.StateClose, probe.StateSynSent)
	event(1_000_050_000, probe.StateSynSent, probe.StateEstablished)

	// The reconciliation begins (startReconcile's inputs) ...
	s.recon = &reconciler{every: time.Hour, out: make(chan reconMsg, 4), busy: true, cur: reconRequest{time: dumpAt, ids: []uint32{netns}}}
	if err := s.dumpDoneInput(netns, lifecycle.PurposeReconcileBegin, dumpAt); err != nil {
		t.Fatal(err)
	}
	// ... the client closes after the reader's last look at the ring, and
	// the dump lists its socket in FIN_WAIT1, ending before the drain.
	s.recon.out <- reconMsg{netns: netns, sockets: []lifecycle.Socket{{Time: dumpAt, NetNS: netns, Family: probe.AFInet,
		State: probe.StateFinWait1, Purpose: lifecycle.PurposeReconcile, Lport: sport, Rport: dport}}}
	s.recon.out <- reconMsg{netns: netns, done: true, last: true}
	drain()
	// The next read of the ring brings the close, then the next drain.
	event(dumpAt+1_000_000, probe.StateEstablished, probe.StateFinWait1)
	drain()
	event(dumpAt+2_000_000, probe.StateFinWait1, probe.StateFinWait2)
	event(dumpAt+3_000_000, probe.StateFinWait2, probe.StateClose)
	s.in.b.Flush()

	var states []probe.State
	for _, sp := range h.r.SpanList() {
		states = append(states, sp.State)
	}
	want := []probe.State{probe.StateSynSent, probe.StateEstablished, probe.StateFinWait1, probe.StateFinWait2}
	if !slices.Equal(states, want) {
		t.Errorf("states %v, want %v", states, want)
	}
	if h.r.Anomalies != 0 {
		t.Errorf("anomalies %v, want none", h.r.Anomalies.Names(nil))
	}
	st := s.in.b.Stats()
	if st.Reconciliations != 1 || st.Reconciled[lifecycle.ReconcileCorrected] != 0 {
		t.Errorf("%d reconciliations, %d corrected; want 1 and 0", st.Reconciliations, st.Reconciled[lifecycle.ReconcileCorrected])
	}
}
