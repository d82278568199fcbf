package connview

import (
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Thresholds are how long a connection may stay in a state before it
// counts as stuck, by state; 0: never. A connection whose entry into its
// state is unknown (older than the tracer) counts once the time since it
// was first seen passes the threshold: never a guessed age.
type Thresholds [probe.MaxState + 1]time.Duration

// Default thresholds: a handshake retransmits its SYN after 1 s and again
// after 3 s; an application that has not closed a socket its peer closed a
// minute ago has leaked it (CLOSE_WAIT) or is leaking its peer's
// (FIN_WAIT2, the other end of that leak); a LAST_ACK waits for one ACK.
const (
	DefaultSynSent   = 3 * time.Second
	DefaultSynRecv   = 3 * time.Second
	DefaultFinWait2  = 60 * time.Second
	DefaultCloseWait = 60 * time.Second
	DefaultLastAck   = 30 * time.Second
	// MaxThreshold bounds a threshold: a day.
	MaxThreshold = 24 * time.Hour
)

// WatchedStates are the states a threshold may be set for: those a
// connection leaves by itself unless something is wrong. ESTABLISHED may
// last forever, and TIME_WAIT ends on the kernel's timer.
var WatchedStates = []probe.State{probe.StateSynSent, probe.StateSynRecv, probe.StateFinWait1,
	probe.StateFinWait2, probe.StateCloseWait, probe.StateLastAck, probe.StateClosing}

// DefaultThresholds are the defaults above; FIN_WAIT1 and CLOSING are not
// watched unless set.
func DefaultThresholds() Thresholds {
	var t Thresholds
	t[probe.StateSynSent] = DefaultSynSent
	t[probe.StateSynRecv] = DefaultSynRecv
	t[probe.StateFinWait2] = DefaultFinWait2
	t[probe.StateCloseWait] = DefaultCloseWait
	t[probe.StateLastAck] = DefaultLastAck
	return t
}

// Watched reports whether a threshold is set for the state.
func (t *Thresholds) Watched(s probe.State) bool { return s <= probe.MaxState && t[s] > 0 }

// Stuck reports whether a connection that has been in state s for age ns
// is past its threshold.
func (t *Thresholds) Stuck(s probe.State, age uint64) bool {
	return t.Watched(s) && age > uint64(t[s])
}
