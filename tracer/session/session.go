// Package session runs tcpfsm's pipeline: the probe's events, sock_diag
// snapshots and TIME_WAIT polls, cgroup paths and clock ticks, fed in one
// order to a lifecycle builder and, when asked, to a recording. Replay
// feeds a recording's inputs through the same path, so a replay gives the
// records the live run gave. Between the builder and the handlers, the
// metadata stage (metadata.go) names the records' containers and peers
// from what the container runtime said, itself an input (live.go), so
// replays name them as the live run did.
package session

import (
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
	"github.com/tcpfsm/tcpfsm/tracer/sockdiag"
)

// Session is a running pipeline.
type Session struct {
	opts  Options
	probe *probe.Probe
	clock clock.Clock

	// mu guards the builder: Run feeds it, other goroutines read its
	// gauges through With.
	mu      sync.Mutex
	in      *ingest
	lostRec probe.LostCounts
	// released: the builder's Released when memory was last handed back
	released uint64
	// ev holds the event being handled, aux the other inputs: each input
	// is decoded once, into one of them, and the builder and the
	// recording are given the same value.
	ev, aux recording.Input

	lastDrained atomic.Int64 // unix ns of the last time the ring was empty
	lostReadAt  time.Time    // when drained last read the loss counters

	cgroups *cgroups.Resolver
	poller  *poller
	recon   *reconciler // nil without Options.Reconcile

	// meta asks the runtime and queues its answers (nil without
	// Options.Metadata); metaIn and answerBuf hold answers being input,
	// answering stops input from recursing into metaInputs.
	meta      *liveMeta
	metaIn    recording.Input
	answerBuf []recording.Meta
	answering bool

	started  time.Time
	warnings []string
	// seedTook and seeded: how long the snapshot at start took (dump,
	// owners, seeding) and how many sockets it listed.
	seedTook time.Duration
	seeded   int
}

// Snapshot is how many sockets the snapshot at start listed and how long
// dumping them, finding their owners and seeding the builder took.
func (s *Session) Snapshot() (sockets int, took time.Duration) { return s.seeded, s.seedTook }

// Warnings lists what the session could not do and works around.
func (s *Session) Warnings() []string { return s.warnings }

// Open loads the probe, takes the snapshot of existing connections and
// returns a session ready to Run.
func Open(opts Options) (_ *Session, err error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.TimeWaitPoll == 0 {
		opts.TimeWaitPoll = DefaultTimeWaitPoll
	}
	c := opts.Clock
	if c.BootNs == 0 {
		var err error
		if c, err = clock.Now(); err != nil {
			return nil, fmt.Errorf("read clocks: %w", err)
		}
	}
	p, err := probe.Open(opts.Probe)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	s := &Session{opts: opts, probe: p, clock: c, cgroups: cgroups.NewResolver(""), started: time.Now()}
	s.lastDrained.Store(time.Now().UnixNano())
	s.in = newIngest(opts.Handler, opts.Lifecycle, opts.OnEvent)
	s.in.onEventMeta = opts.OnEventMeta

	f := p.Features()
	if err := s.input(&recording.Input{Kind: recording.KindFeatures, Features: f}); err != nil {
		return nil, err
	}
	// Before any cgroup: the stage asks about each container it sees.
	if err := s.startMeta(); err != nil {
		return nil, err
	}
	if !opts.NoSnapshot {
		t0 := time.Now()
		err := s.snapshot()
		s.seedTook = time.Since(t0)
		if err != nil {
			// Connections open before the start stay partial records
			// without owners; everything else works.
			hint := ""
			if errors.Is(err, syscall.ENOENT) {
				hint = " (is sock_diag for TCP loaded? modprobe tcp_diag)"
			}
			s.warnings = append(s.warnings, fmt.Sprintf("no snapshot of existing connections: %v%s", err, hint))
		}
	}
	// With fentry too: it reports no peer's FIN to an orphan in FIN_WAIT2.
	if opts.TimeWaitPoll > 0 {
		s.poller = newPoller(opts.TimeWaitPoll, opts.NetNSPaths)
	}
	// Owner filters select sockets by process, which a dump cannot tell
	// for every socket: reconciling would count what the probe never reports.
	if opts.Reconcile > 0 && f0(&opts.Probe.Filter) {
		s.recon = newReconciler(opts.Reconcile, opts.NetNSPaths, opts.Probe.Filter,
			reconHooks{unheld: s.unheld, cgroupID: s.cgroups.ID})
	}
	return s, nil
}

// Probe is the session's probe (features, stats, lost counts).
func (s *Session) Probe() *probe.Probe { return s.probe }

// Clock maps the session's timestamps to wall clock time.
func (s *Session) Clock() clock.Clock { return s.clock }

// With runs f with the builder locked, for readers on other goroutines.
func (s *Session) With(f func(b *lifecycle.Builder)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s.in.b)
}

// Run reads events until Stop, feeding every input to the builder (and
// the recording), and flushes the builder at the end; records that wait
// for their metadata then wait at most Options.MetadataWait more.
func (s *Session) Run() error {
	defer s.poller.close()
	defer s.recon.close()
	err := s.probe.Read(s.event, s.drained)
	if err == nil {
		// The last drain may have come within lostEvery of a reading:
		// what was lost up to the end still flags the records flushed now.
		err = s.readLost()
	}
	s.mu.Lock()
	s.in.b.Flush()
	s.mu.Unlock()
	if merr := s.finishMeta(); err == nil {
		err = merr
	}
	return err
}

// Stop detaches the probe; Run returns after the ring is drained.
func (s *Session) Stop() error { return s.probe.Stop() }

// Close frees the probe.
func (s *Session) Close() error { return s.probe.Close() }

// input writes one decoded input to the recording, when there is one,
// then applies it.
func (s *Session) input(x *recording.Input) error {
	if s.opts.Record != nil {
		if err := s.opts.Record.WriteInput(x); err != nil {
			return fmt.Errorf("recording: %w", err)
		}
	}
	s.mu.Lock()
	err := s.in.apply(x)
	s.mu.Unlock()
	if err == nil && s.meta != nil {
		err = s.metaInputs()
	}
	return err
}

// event handles one raw event from the ring buffer: decoded here, once.
func (s *Session) event(raw []byte) error {
	x := &s.ev
	x.Kind = recording.KindEvent
	if err := probe.Decode(raw, &x.Event); err != nil {
		return err
	}
	// A cgroup first seen gets its path recorded before the event, so
	// replays name containers too.
	if e := &x.Event; e.OwnerKnown() && e.CgroupId != 0 && !s.in.knowsCgroup(e.CgroupId) {
		path, _ := s.cgroups.Path(e.CgroupId)
		if err := s.cgroupInput(e.CgroupId, path); err != nil {
			return err
		}
	}
	return s.input(x)
}

func (s *Session) cgroupInput(id uint64, path string) error {
	s.aux = recording.Input{Kind: recording.KindCgroup, Cgroup: recording.Cgroup{ID: id, Path: path}}
	return s.input(&s.aux)
}

// LastDrained is when the reader last had emptied the ring buffer: a
// reader keeping up does so at least once per flush interval.
func (s *Session) LastDrained() time.Time { return time.Unix(0, s.lastDrained.Load()) }

// drained runs between bursts: losses, TIME_WAIT polls, the clock.
func (s *Session) drained() error {
	now := time.Now()
	s.lastDrained.Store(now.UnixNano())
	if now.Sub(s.lostReadAt) >= lostEvery {
		s.lostReadAt = now
		if err := s.readLost(); err != nil {
			return err
		}
	}
	if s.recon != nil {
		if err := s.reconcile(); err != nil {
			return err
		}
	}
	if s.poller != nil {
		if err := s.pollTimeWait(); err != nil {
			return err
		}
	}
	if s.meta != nil {
		if err := s.metaInputs(); err != nil {
			return err
		}
		if err := s.syncPodIPs(); err != nil {
			return err
		}
	}
	s.aux = recording.Input{Kind: recording.KindTick, Tick: clock.Monotonic()}
	if err := s.input(&s.aux); err != nil {
		return err
	}
	s.returnMemory()
	if s.opts.Record != nil {
		if err := s.opts.Record.Flush(); err != nil {
			return fmt.Errorf("recording: %w", err)
		}
	}
	if s.opts.OnDrained != nil {
		return s.opts.OnDrained()
	}
	return nil
}

// lostEvery is how often, at most, drained reads the loss counters. A
// reading is seven bpf(2) calls and their allocations (the per-CPU
// counters, each program's stats); a reader keeping up with full churn
// empties the ring a few thousand times a second, and reading at every
// drain was about 2 % of the agent's CPU. A loss is still seen within
// 10 ms of the first drain after it, against the 50 ms a drain may
// take when idle.
const lostEvery = 10 * time.Millisecond

// readLost reads the loss counters and, when they moved, tells the
// builder (records open across a loss are flagged) and the recording.
func (s *Session) readLost() error {
	// A failed reading is retried at a later drain: the counters are
	// cumulative, nothing is missed.
	lc, lerr := s.probe.Lost()
	if lerr != nil || lc == s.lostRec {
		return nil //nolint:nilerr // see above
	}
	s.lostRec = lc
	s.aux = recording.Input{Kind: recording.KindLost, Lost: lc}
	if err := s.input(&s.aux); err != nil {
		return err
	}
	if s.recon != nil {
		s.recon.soon()
	}
	return nil
}

// returnMemoryAfter is how much the builder must let go of (a mass close)
// before the session hands the memory back to the OS.
const returnMemoryAfter = 16 << 20

// returnMemory hands the pages the builder let go of back to the OS at
// once: the Go runtime's scavenger would return them over minutes, and the
// resident size would stay near its peak meanwhile. It runs on its own
// goroutine (a forced GC, tens of ms at 100,000 connections), only after a
// big drop. Only Run's goroutine changes the builder, so it reads it
// without the lock.
func (s *Session) returnMemory() {
	if r := s.in.b.Released(); r >= s.released+returnMemoryAfter {
		s.released = r
		go debug.FreeOSMemory()
	}
}

// pollTimeWait applies a finished poll and starts the next when due.
func (s *Session) pollTimeWait() error {
	if res, ok := s.poller.result(); ok {
		for i := range res.sockets {
			if err := s.socketInput(&res.sockets[i]); err != nil {
				return err
			}
		}
		for j, ns := range res.done {
			s.aux = recording.Input{Kind: recording.KindDumpDone, DumpDone: recording.DumpDone{NetNS: ns,
				Purpose: lifecycle.PurposeTimeWait, Time: res.time, FinTimeout: res.fin[j]}}
			if err := s.input(&s.aux); err != nil {
				return err
			}
		}
	}
	if s.poller.due() {
		s.mu.Lock()
		nss := s.in.b.TimeWaitNetNS(nil)
		s.mu.Unlock()
		if len(nss) > 0 {
			s.poller.start(nss)
		}
	}
	return nil
}

// snapshot dumps every TCP socket of every network namespace and seeds
// the builder with them, and the probe with the owners of listeners.
func (s *Session) snapshot() error {
	paths, err := namespacePaths(s.opts.NetNSPaths)
	if err != nil {
		return err
	}
	f := &s.opts.Probe.Filter
	type found struct {
		sock  lifecycle.Socket
		inode uint32
	}
	var all []found
	wanted := map[uint32]struct{}{}
	for inode, path := range paths {
		if f.NetNS != 0 && inode != f.NetNS {
			continue
		}
		d, err := sockdiag.OpenInNetNS(path)
		if err != nil {
			continue // the namespace vanished or is out of reach
		}
		now := clock.Monotonic()
		err = d.Dump(sockdiag.AllStates, func(ds *sockdiag.Socket) error {
			if !tupleMatches(f, ds) {
				return nil
			}
			ls := lifecycle.Socket{Time: now, NetNS: inode, ExpiresMs: ds.ExpiresMs, Family: ds.Family,
				State: probe.State(ds.State), TimeWait: ds.TimeWait, Purpose: lifecycle.PurposeSnapshot,
				Lport: ds.Sport, Rport: ds.Dport, Laddr: ds.Saddr, Raddr: ds.Daddr}
			all = append(all, found{ls, ds.Inode})
			s.seeded++
			if ds.Inode != 0 {
				wanted[ds.Inode] = struct{}{}
			}
			return nil
		})
		d.Close()
		if err != nil {
			return fmt.Errorf("netns %d: %w", inode, err)
		}
	}
	owners, err := sockdiag.Owners(wanted)
	if err != nil {
		return err
	}
	done := map[uint32]bool{}
	s.mu.Lock()
	s.in.b.Reserve(len(all))
	s.mu.Unlock()
	for _, x := range all {
		ls := x.sock
		if o, ok := owners[x.inode]; ok && x.inode != 0 {
			ls.Pid = o.Pid
			copy(ls.Comm[:15], o.Comm)
			ls.CgroupID = s.cgroups.ID(o.CgroupPath)
			if ls.State == probe.StateListen {
				// Owners of listeners that predate tcpfsm, for the
				// connections they will accept.
				// ErrKeyExist: the listener's own listen() was seen, and
				// its entry is the newer one. Any other failure leaves
				// only the owner of the connections it accepts unknown:
				// not a reason to stop seeding.
				_ = s.probe.SeedListener(ls.NetNS, ls.Lport, ls.Pid, o.Comm, ls.CgroupID)
			}
			if ls.CgroupID != 0 && !s.in.knowsCgroup(ls.CgroupID) {
				if err := s.cgroupInput(ls.CgroupID, o.CgroupPath); err != nil {
					return err
				}
			}
		}
		done[ls.NetNS] = true
		if !ownerMatches(f, &ls) {
			continue // the probe reports none of its events
		}
		if err := s.socketInput(&ls); err != nil {
			return err
		}
	}
	now := clock.Monotonic()
	for ns := range done {
		if err := s.dumpDoneInput(ns, lifecycle.PurposeSnapshot, now); err != nil {
			return err
		}
	}
	return nil
}

func (s *Session) socketInput(sock *lifecycle.Socket) error {
	s.aux = recording.Input{Kind: recording.KindSocket, Socket: *sock}
	return s.input(&s.aux)
}

func (s *Session) dumpDoneInput(netns uint32, purpose lifecycle.Purpose, time uint64) error {
	s.aux = recording.Input{Kind: recording.KindDumpDone, DumpDone: recording.DumpDone{NetNS: netns, Purpose: purpose, Time: time}}
	return s.input(&s.aux)
}

// f0: the filter selects no owner.
func f0(f *probe.Filter) bool { return f.PID == 0 && f.CgroupID == 0 }

// ownerMatches applies the owner part of the kernel filter to a snapshot
// socket: one whose owner /proc did not tell is left out under an owner
// filter, its first event seeds its record if the probe passes it.
func ownerMatches(f *probe.Filter, s *lifecycle.Socket) bool {
	if f.PID != 0 && s.Pid != f.PID {
		return false
	}
	return f.CgroupID == 0 || (s.CgroupID != 0 && s.CgroupID == f.CgroupID)
}

// tupleMatches applies the socket part of the kernel filter to a dumped
// socket, so the snapshot seeds only what the probe will report.
func tupleMatches(f *probe.Filter, s *sockdiag.Socket) bool {
	e := probe.Event{Family: s.Family, Sport: s.Sport, Dport: s.Dport}
	g := probe.Filter{Family: f.Family, LocalPorts: f.LocalPorts, RemotePorts: f.RemotePorts}
	return g.Match(&e)
}

// Container names the container of a cgroup id, "" when none: for labels
// of connections still open.
func (s *Session) Container(cgroupID uint64) string {
	if c, ok := s.cgroups.Container(cgroupID); ok {
		return c.String()
	}
	return ""
}

// MetaOf is what the runtime told of the container of a cgroup id, for
// views of connections still open (records carry theirs in Meta): the
// resolver's answer now, without waiting; false when unknown or without
// Options.Metadata. Pod labels are those Options.PodLabels keeps.
func (s *Session) MetaOf(cgroupID uint64) (metadata.Meta, bool) {
	if s.meta == nil {
		return metadata.Meta{}, false
	}
	c, ok := s.cgroups.Container(cgroupID)
	if !ok {
		return metadata.Meta{}, false
	}
	m, ok := s.meta.r.Lookup(c)
	if !ok {
		return metadata.Meta{}, false
	}
	return s.meta.keep(m), true
}

// MetaStats are the metadata stage's counters.
func (s *Session) MetaStats() MetaStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.in.meta.statsNow()
}

// NamesContainers reports whether the session has a metadata resolver.
func (s *Session) NamesContainers() bool { return s.meta != nil }
