package lifecycle

import (
	"slices"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// close() on a socket whose FIN is out moves it to the state it is in
// (tcp_close_state: FIN_WAIT1, FIN_WAIT2, CLOSING and LAST_ACK stay), and
// the tracepoint reports that as X -> X: the host's 6.18 gave a client's
// shutdown() then close() FIN_WAIT2 -> FIN_WAIT2 (bpftrace). No
// transition: the record keeps its states, with their times, and no
// anomaly.
func TestCloseAfterOurFIN(t *testing.T) {
	fin := withFlags(probe.FlagFinReceived)
	tw := withFlags(probe.FlagTimeWait | probe.FlagFinReceived)
	cases := []struct {
		name   string
		exact  bool // fentry: the kernel flags the closes into TIME_WAIT
		events []probe.Event
		id     uint64
		// the record's close, its states and their entries (ms)
		role      Role
		initiator Initiator
		kind      Kind
		tw        TimeWaitEnd
		states    []probe.State
		enter     []uint64
	}{
		// The simultaneous close of TestScenariosLive: both ends shut
		// down with loopback down, the client's FIN retransmitted first.
		// The server (passive) is in CLOSING when both read EOF and
		// close, the client's ACK of its FIN still to come: the 6.12
		// VM's invalid_transition.
		{"simultaneous close, the passive end closed in CLOSING", true, []probe.Event{
			st(1, 10, CLOSE, SS), st(1, 11, SS, EST, withFlags(probe.FlagSynAcked)),
			st(2, 11, LST, SR), st(2, 12, SR, EST),
			st(1, 50, EST, FW1), st(2, 70, EST, FW1),
			st(2, 250, FW1, CLG, fin), st(1, 251, FW1, FW2, withFlags(probe.FlagFinAcked)),
			st(1, 270, FW2, CLOSE, tw),
			st(2, 272, CLG, CLG, fin), // close(), before the ACK
			st(2, 273, CLG, CLOSE, tw),
		}, 2, RolePassive, InitiatorBoth, KindSimultaneous, TWPending,
			[]probe.State{SR, EST, FW1, CLG, TW}, []uint64{11, 12, 70, 250, 273}},
		{"the same without fentry", false, []probe.Event{
			st(2, 11, LST, SR), st(2, 12, SR, EST), st(2, 70, EST, FW1),
			st(2, 250, FW1, CLG, fin), st(2, 272, CLG, CLG, fin), st(2, 273, CLG, CLOSE, fin),
		}, 2, RolePassive, InitiatorBoth, KindSimultaneous, TWPending,
			[]probe.State{SR, EST, FW1, CLG, TW}, []uint64{11, 12, 70, 250, 273}},
		// shutdown(), the FIN acknowledged, then close(): an orphan in
		// FIN_WAIT2, its time-wait socket taking the peer's FIN.
		{"shutdown, then close in FIN_WAIT2", true, []probe.Event{
			st(1, 10, CLOSE, SS), st(1, 11, SS, EST, withFlags(probe.FlagSynAcked)),
			st(2, 11, LST, SR), st(2, 12, SR, EST),
			st(1, 50, EST, FW1), st(2, 50, EST, CW, fin), st(1, 51, FW1, FW2, withFlags(probe.FlagFinAcked)),
			st(1, 60, FW2, FW2),
			st(1, 60, FW2, CLOSE, withFlags(probe.FlagTimeWait|probe.FlagTWFinWait2)),
			st(2, 500, CW, LA, fin), st(2, 501, LA, CLOSE, fin),
		}, 1, RoleActive, InitiatorLocal, KindGraceful, TWPending,
			[]probe.State{SS, EST, FW1, FW2, TW}, []uint64{10, 11, 50, 51, 500}},
		{"the same without fentry", false, []probe.Event{
			st(1, 10, CLOSE, SS), st(1, 11, SS, EST, withFlags(probe.FlagSynAcked)),
			st(2, 11, LST, SR), st(2, 12, SR, EST),
			st(1, 50, EST, FW1), st(2, 50, EST, CW, fin), st(1, 51, FW1, FW2, withFlags(probe.FlagFinAcked)),
			st(1, 60, FW2, FW2), st(1, 60, FW2, CLOSE),
			st(2, 500, CW, LA, fin), st(2, 501, LA, CLOSE, fin),
		}, 1, RoleActive, InitiatorLocal, KindGraceful, TWPending,
			[]probe.State{SS, EST, FW1, FW2, TW}, []uint64{10, 11, 50, 51, 500}},
		// shutdown() and close() at once: the FIN not yet acknowledged.
		{"shutdown, then close in FIN_WAIT1", true, []probe.Event{
			st(1, 10, CLOSE, SS), st(1, 11, SS, EST, withFlags(probe.FlagSynAcked)),
			st(1, 50, EST, FW1), st(1, 50, FW1, FW1), st(1, 51, FW1, FW2, withFlags(probe.FlagFinAcked)),
			st(1, 52, FW2, CLOSE, tw),
		}, 1, RoleActive, InitiatorLocal, KindGraceful, TWPending,
			[]probe.State{SS, EST, FW1, FW2, TW}, []uint64{10, 11, 50, 51, 52}},
		// The peer closed first; shutdown() sent our FIN, then close().
		{"shutdown in CLOSE_WAIT, then close in LAST_ACK", true, []probe.Event{
			st(2, 11, LST, SR), st(2, 12, SR, EST), st(2, 50, EST, CW, fin),
			st(2, 60, CW, LA, fin), st(2, 60, LA, LA, fin), st(2, 61, LA, CLOSE, fin),
		}, 2, RolePassive, InitiatorRemote, KindGraceful, TWNone,
			[]probe.State{SR, EST, CW, LA}, []uint64{11, 12, 50, 60}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var s sink
			b := NewBuilder(Config{ExactTimeWait: tc.exact}, &s)
			feed(b, tc.events...)
			b.Tick(tc.events[len(tc.events)-1].TsNs + 10*ms)
			var r *Record
			for i := range s.closed {
				if s.closed[i].ID == tc.id {
					r = &s.closed[i]
				}
			}
			if r == nil {
				t.Fatalf("record %d not closed (%d closed)", tc.id, len(s.closed))
			}
			if r.Role != tc.role || r.Initiator != tc.initiator || r.Kind != tc.kind || r.TimeWait != tc.tw {
				t.Errorf("%s %s/%s tw=%s, want %s %s/%s tw=%s", r.Role, r.Initiator, r.Kind, r.TimeWait,
					tc.role, tc.initiator, tc.kind, tc.tw)
			}
			if got := spans(r); !slices.Equal(got, tc.states) {
				t.Errorf("states %v, want %v", got, tc.states)
			}
			var enter []uint64
			for _, sp := range r.SpanList() {
				enter = append(enter, sp.Enter/ms)
			}
			if !slices.Equal(enter, tc.enter) {
				t.Errorf("entered at %v ms, want %v", enter, tc.enter)
			}
			if r.Anomalies != 0 {
				t.Errorf("anomalies %v", r.Anomalies.Names(nil))
			}
			for i := range s.closed {
				if a := s.closed[i].Anomalies; a != 0 {
					t.Errorf("record %d: anomalies %v", s.closed[i].ID, a.Names(nil))
				}
			}
			if st := b.Stats(); st.Anomalies != [AnomalyKinds]uint64{} || st.Unmatched != 0 {
				t.Errorf("anomaly counters %v, unmatched %d", st.Anomalies, st.Unmatched)
			}
		})
	}
}

// A same-state event of a state that has not sent our FIN is no close():
// the kernel has no such transition, and it stays invalid.
func TestSameStateBeforeOurFINIsInvalid(t *testing.T) {
	var s sink
	b := NewBuilder(Config{}, &s)
	feed(b, st(1, 10, CLOSE, SS), st(1, 11, SS, EST), st(1, 12, EST, EST), st(1, 13, EST, CLOSE))
	b.Flush()
	r := one(t, s.closed)
	if r.Anomalies != AnomalyInvalidTransition {
		t.Errorf("anomalies %v, want invalid_transition", r.Anomalies.Names(nil))
	}
	if got := spans(r); !slices.Equal(got, []probe.State{SS, EST, EST}) {
		t.Errorf("states %v", got)
	}
}
