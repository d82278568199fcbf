package connview

import (
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Totals are counters since the tracer started, for rates.
type Totals struct {
	Opened          uint64 `json:"opened"`           // connect() and accepted connections
	Closed          uint64 `json:"closed"`           // connections closed
	Resets          uint64 `json:"resets"`           // RSTs sent and received
	ConnectFailures uint64 `json:"connect_failures"` // connect() that never reached ESTABLISHED
}

// Summary is what top's header shows: GET /api/v1/summary.
type Summary struct {
	Time time.Time `json:"time"`
	// States counts the connections in each state, as the
	// tcpfsm_connections gauge does.
	States  map[string]int `json:"states"`
	Open    int            `json:"open"`    // open connection records
	Tracked int            `json:"tracked"` // records held, TIME_WAIT included
	Totals  Totals         `json:"totals"`
	// Stuck has one entry per watched state, in state order.
	Stuck []StuckState `json:"stuck"`
}

// StuckState is a watched state: its threshold, the connections in it,
// those past the threshold, and the longest time one has been in it.
type StuckState struct {
	State            string  `json:"state"`
	ThresholdSeconds float64 `json:"threshold_seconds"`
	Count            int     `json:"count"`
	Stuck            int     `json:"stuck"`
	OldestSeconds    float64 `json:"oldest_seconds"`
}

// SummaryStates are the states Summary counts: those a tracked
// connection can be in.
var SummaryStates = []probe.State{probe.StateEstablished, probe.StateSynSent, probe.StateSynRecv,
	probe.StateFinWait1, probe.StateFinWait2, probe.StateTimeWait, probe.StateCloseWait, probe.StateLastAck,
	probe.StateListen, probe.StateClosing}

// Counts is what Read copies of the builder for a Summary.
type Counts struct {
	now           uint64
	states        [probe.MaxState + 1]int
	open, tracked int
	stuck         Stuck
}

// Read counts, measuring ages at now. Call it with the builder locked.
func (c *Counts) Read(b *lifecycle.Builder, th *Thresholds, now uint64) {
	c.now = now
	for _, st := range SummaryStates {
		c.states[st] = b.StateCount(st)
	}
	c.open, c.tracked = b.OpenCount(), b.Tracked()
	c.stuck.Count(b, th, GroupBy{}, now)
}

// Summary is what Read counted, with the tracer's totals.
func (c *Counts) Summary(clk clock.Clock, th *Thresholds, totals Totals) Summary {
	s := Summary{Time: wall(clk, c.now), States: map[string]int{}, Open: c.open, Tracked: c.tracked, Totals: totals,
		Stuck: []StuckState{}}
	for _, st := range SummaryStates {
		s.States[st.String()] = c.states[st]
	}
	for _, g := range c.stuck.Groups() {
		s.Stuck = append(s.Stuck, StuckState{State: g.State.String(), ThresholdSeconds: th[g.State].Seconds(),
			Count: g.Count, Stuck: g.Stuck, OldestSeconds: seconds(g.OldestNs)})
	}
	return s
}
