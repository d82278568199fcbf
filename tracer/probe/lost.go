package probe

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// LostCounts are transitions the tracer did not see, by reason.
type LostCounts struct {
	RingFull  uint64 // the ring buffer had no room
	Recursion uint64 // the program was busy on that CPU, and nothing ran in its place
}

// Total is the sum over reasons.
func (l LostCounts) Total() uint64 { return l.RingFull + l.Recursion }

// ProgramStats is the kernel's accounting for one program. Run time is
// only counted while BPF stats are enabled (kernel.bpf_stats_enabled, or
// ebpf.EnableStats); recursion misses always are.
type ProgramStats struct {
	Name     string
	RunCount uint64
	RunTime  time.Duration
	// RecursionMisses are the runs the kernel skipped because the program
	// was already running on that CPU. The state program's are mostly
	// caught by its nested instance (NestStats); what is lost is in
	// LostCounts.Recursion.
	RecursionMisses uint64
	// NestedRuns, for the state program's nested instance only, are its
	// runs that did the work: the main program was busy on that CPU.
	// Counted whether BPF stats are enabled or not.
	NestedRuns uint64
}

// NestStats is how the state program's nested instance did: each of the
// main program's recursion misses was either handled by it or lost.
type NestStats struct {
	// Attached: the nested instance runs (raw tracepoint mode only).
	Attached bool
	// Handled are the transitions it handled while the main program was
	// busy on the same CPU.
	Handled uint64
	// MainMisses are the main program's recursion misses, Handled included.
	MainMisses uint64
}

// lostState keeps the reported recursion count monotonic and free of the
// moment between a miss and its nested run (see recursionLost).
type lostState struct {
	mu        sync.Mutex
	recursion uint64
}

// How long a rise of the recursion count waits to be confirmed: the
// nested instance's run, which a reading may fall inside, takes a few
// microseconds.
const (
	confirmReads = 3
	confirmPause = 100 * time.Microsecond
)

// Lost returns the transitions tcpfsm did not see: events that did not
// fit in the ring buffer, summed over CPUs, and program runs the kernel
// skipped because the program was already running on that CPU, less the
// state program's that its nested instance handled instead.
func (p *Probe) Lost() (LostCounts, error) {
	var lc LostCounts
	if p.coll == nil {
		return lc, errors.New("probe closed")
	}
	var perCPU []uint64
	if err := p.coll.Maps[tcpfsmMapLost].Lookup(uint32(0), &perCPU); err != nil {
		return lc, fmt.Errorf("read lost counter: %w", err)
	}
	for _, n := range perCPU {
		lc.RingFull += n
	}
	rec, err := p.recursionLost()
	lc.Recursion = rec
	return lc, err
}

// recursionLost is the programs' recursion misses that nothing caught.
// The kernel counts the main program's miss before the nested instance
// runs, so a reading taken in between sees a miss not yet handled: a
// rise is read again after a pause, the smallest reading kept, and the
// count never goes down (a Prometheus counter).
func (p *Probe) recursionLost() (uint64, error) {
	p.lost.mu.Lock()
	defer p.lost.mu.Unlock()
	live := len(p.links) > 0 // detached: nothing is in flight
	v, err := confirmRise(p.lost.recursion, live, p.recursionReading, func() { time.Sleep(confirmPause) })
	p.lost.recursion = v
	return v, err
}

// confirmRise is the count to report after prev: a reading above it is
// read again (up to confirmReads in all, pausing between) when runs may
// be in flight, and the smallest reading kept; never less than prev.
func confirmRise(prev uint64, live bool, read func() (uint64, error), pause func()) (uint64, error) {
	v, err := read()
	if err != nil {
		return prev, err
	}
	for i := 1; live && v > prev && i < confirmReads; i++ {
		pause()
		w, err := read()
		if err != nil {
			return prev, err
		}
		v = min(v, w)
	}
	return max(prev, v), nil
}

// recursionReading is one reading: handled first, then the misses, so
// every handled run's miss is in it.
func (p *Probe) recursionReading() (uint64, error) {
	handled, err := p.nestHandled()
	if err != nil {
		return 0, err
	}
	misses := map[string]uint64{}
	for name, prog := range p.progs {
		st, err := prog.Stats()
		if err != nil {
			return 0, fmt.Errorf("read program stats: %w", err)
		}
		misses[name] = st.RecursionMisses
	}
	return uncaught(misses, handled), nil
}

// uncaught is the recursion misses nothing ran in place of, from each
// program's misses and the nested instance's handled runs. The nested
// instance's own misses are not losses: it is only busy while the main
// program is not (the main one then runs), or while it is handling one of
// the main one's misses, and then the main one misses too and counts.
func uncaught(misses map[string]uint64, handled uint64) uint64 {
	var n uint64
	for name, m := range misses {
		switch name {
		case tcpfsmProgRawNestedInetSockSetState:
		case tcpfsmProgRawInetSockSetState:
			n += m - min(m, handled)
		default:
			n += m
		}
	}
	return n
}

// nestHandled sums the nested instance's handled runs over CPUs.
func (p *Probe) nestHandled() (uint64, error) {
	if _, ok := p.progs[tcpfsmProgRawNestedInetSockSetState]; !ok {
		return 0, nil
	}
	var perCPU []tcpfsmNest
	if err := p.coll.Maps[tcpfsmMapNest].Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read nested runs: %w", err)
	}
	var n uint64
	for _, c := range perCPU {
		n += c.Handled
	}
	return n, nil
}

// clearNest empties every CPU's notes of pending calls (bpf/nest.bpf.h).
func (p *Probe) clearNest() error {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("count CPUs: %w", err)
	}
	if err := p.coll.Maps[tcpfsmMapNest].Update(uint32(0), make([]tcpfsmNest, n), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("clear the nested instance's notes: %w", err)
	}
	return nil
}

// Nest returns how the state program's nested instance did.
func (p *Probe) Nest() (NestStats, error) {
	var ns NestStats
	if p.coll == nil {
		return ns, errors.New("probe closed")
	}
	_, ns.Attached = p.progs[tcpfsmProgRawNestedInetSockSetState]
	var err error
	if ns.Handled, err = p.nestHandled(); err != nil {
		return ns, err
	}
	if main, ok := p.progs[tcpfsmProgRawInetSockSetState]; ok {
		st, err := main.Stats()
		if err != nil {
			return ns, fmt.Errorf("read program stats: %w", err)
		}
		ns.MainMisses = st.RecursionMisses
	}
	return ns, nil
}

// Stats returns every loaded program's run count, run time and recursion
// misses, by name.
func (p *Probe) Stats() ([]ProgramStats, error) {
	var out []ProgramStats
	for name, prog := range p.progs {
		st, err := prog.Stats()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		ps := ProgramStats{Name: name, RunCount: st.RunCount, RunTime: st.Runtime, RecursionMisses: st.RecursionMisses}
		if name == tcpfsmProgRawNestedInetSockSetState {
			if ps.NestedRuns, err = p.nestHandled(); err != nil {
				return nil, err
			}
		}
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b ProgramStats) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
