package session

import (
	"fmt"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

// Options configure a live session.
type Options struct {
	Probe     probe.Options
	Lifecycle lifecycle.Config
	// Handler receives the records; nil drops them.
	Handler lifecycle.Handler
	// OnEvent sees every event before the builder does.
	OnEvent func(e *probe.Event)
	// OnDrained runs each time the ring buffer was emptied, and at least
	// once per flush interval: flush outputs there.
	OnDrained func() error
	// Record, when set, receives every input in the order the builder
	// gets it.
	Record *recording.Writer
	// TimeWaitPoll is how often sock_diag looks for the end of
	// reconstructed TIME_WAITs: MinTimeWaitPoll to MaxTimeWaitPoll.
	// Default DefaultTimeWaitPoll; negative disables it.
	TimeWaitPoll time.Duration
	// NoSnapshot skips the sock_diag snapshot of existing connections.
	NoSnapshot bool
	// Reconcile is how often every namespace's sockets are dumped and the
	// records repaired from them (reconcile.go), MinReconcile to
	// MaxReconcile; one also runs ReconcileAfterLoss after events were
	// lost. 0 (the default for library users) or negative: off.
	Reconcile time.Duration
	// Clock maps timestamps to wall clock; zero takes it now. A recording's
	// header and the session must agree on it.
	Clock clock.Clock
	// NetNSPaths names namespaces no process is in (a --netns path, or a
	// test's), by inode, for the snapshot and the TIME_WAIT polls.
	NetNSPaths map[uint32]string

	// Metadata, when set, names the containers of the records' owners
	// and their peers (Record.Meta, Record.Peer): a *metadata.Resolver.
	// Its answers go into the recording, so replays name them too.
	Metadata MetaResolver
	// MetadataWait is how long a record whose container was not named
	// yet, or whose node-local peer's record has not come, waits before
	// it is handed out with what is known (counted, MetaStats): default
	// DefaultMetadataWait, at most MaxMetadataWait, negative: never.
	MetadataWait time.Duration
	// MetadataEntries bounds the containers the session remembers:
	// default DefaultMetadataEntries.
	MetadataEntries int
	// PodLabels are the pod labels records keep (Meta.Pod.Labels); none
	// by default.
	PodLabels []string
	// OnEventMeta, when set, sees every event after OnEvent with what
	// the session knows of its owner's container then (nil: nothing).
	OnEventMeta func(e *probe.Event, m *metadata.Meta)
}

// Defaults and limits of Options, for commands to offer and show.
const (
	DefaultTimeWaitPoll = time.Second
	// MinTimeWaitPoll keeps the polls' sock_diag dumps cheap.
	MinTimeWaitPoll = 100 * time.Millisecond
	// MaxTimeWaitPoll is TIME_WAIT's length: polling less often finds
	// nothing the assumed 60 s end does not.
	MaxTimeWaitPoll = time.Minute
	// DefaultReconcile is the agent's reconciliation interval.
	DefaultReconcile = 30 * time.Second
	// MinReconcile bounds the cost of dumping every socket (about 90 ms
	// of CPU per 100,000 sockets, BENCHMARKS.md).
	MinReconcile = time.Second
	MaxReconcile = time.Hour
	// ReconcileAfterLoss: how soon after a loss of events a
	// reconciliation runs (the burst that lost them is likely over).
	ReconcileAfterLoss = time.Second
)

// Validate checks the options as Open would, without loading anything.
func (o Options) Validate() error {
	if p := o.TimeWaitPoll; p > 0 && (p < MinTimeWaitPoll || p > MaxTimeWaitPoll) {
		return fmt.Errorf("TIME_WAIT poll interval %s: want %s to %s, or negative (off)", p, MinTimeWaitPoll, MaxTimeWaitPoll)
	}
	if r := o.Reconcile; r > 0 && (r < MinReconcile || r > MaxReconcile) {
		return fmt.Errorf("reconciliation interval %s: want %s to %s, or 0 (off)", r, MinReconcile, MaxReconcile)
	}
	if o.MetadataWait > MaxMetadataWait {
		return fmt.Errorf("metadata wait %s: want at most %s", o.MetadataWait, MaxMetadataWait)
	}
	if o.MetadataEntries < 0 {
		return fmt.Errorf("metadata entries %d: want a positive number", o.MetadataEntries)
	}
	if err := o.Probe.Validate(); err != nil {
		return err
	}
	return o.Lifecycle.Validate()
}

func (o *Options) metadataWait() time.Duration {
	switch {
	case o.MetadataWait < 0:
		return 0
	case o.MetadataWait == 0:
		return DefaultMetadataWait
	}
	return o.MetadataWait
}

func (o *Options) metadataEntries() int {
	if o.MetadataEntries <= 0 {
		return DefaultMetadataEntries
	}
	return o.MetadataEntries
}
