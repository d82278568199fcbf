// Package probe loads tcpfsm's BPF programs, attaches them to the kernel's
// inet_sock_set_state tracepoint and hands the raw events they produce to
// its caller. It also defines the event type and decodes it.
package probe

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
)

// Attach chooses how the programs hook inet_sock_set_state.
type Attach string

const (
	// AttachAuto uses the raw tracepoint when the kernel allows it and
	// the classic tracepoint otherwise.
	AttachAuto Attach = "auto"
	// AttachRaw is the raw tracepoint: no tracefs, cheaper dispatch.
	AttachRaw Attach = "raw_tracepoint"
	// AttachTracepoint is the classic tracepoint; it needs tracefs, which
	// tcpfsm mounts when it is missing.
	AttachTracepoint Attach = "tracepoint"
)

// ParseAttach validates an attach mode name.
func ParseAttach(s string) (Attach, error) {
	switch a := Attach(s); a {
	case AttachAuto, AttachRaw, AttachTracepoint:
		return a, nil
	}
	return "", fmt.Errorf("unknown attach mode %q (want auto, raw_tracepoint or tracepoint)", s)
}

// Options configure Open. The zero value traces everything with defaults.
type Options struct {
	Filter Filter
	Attach Attach
	// RingBufferSize is the ring buffer's size in bytes, a power of two
	// and a multiple of the page size. Default 8 MiB.
	RingBufferSize int
	// MaxConnections bounds the kernel's per-socket table (an LRU).
	// Default 65536.
	MaxConnections int
	// FlushInterval bounds how long an event may wait in the ring buffer
	// when traffic is light: the kernel does not wake the reader for each
	// event, the reader polls this often. Default 50ms.
	FlushInterval time.Duration
	// WakeupBytes makes the kernel wake the reader once that much data
	// waits, so bursts are drained early. Default a sixteenth of the ring.
	WakeupBytes int
}

const (
	defaultRingBufferSize = 8 << 20
	defaultMaxConnections = 65536
	defaultFlushInterval  = 50 * time.Millisecond
)

func (o *Options) setDefaults() error {
	if o.Attach == "" {
		o.Attach = AttachAuto
	}
	if _, err := ParseAttach(string(o.Attach)); err != nil {
		return err
	}
	if o.RingBufferSize == 0 {
		o.RingBufferSize = defaultRingBufferSize
	}
	page := os.Getpagesize()
	if rb := o.RingBufferSize; rb < page || rb&(rb-1) != 0 {
		return fmt.Errorf("ring buffer size %d: must be a power of two of at least %d bytes", rb, page)
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = defaultMaxConnections
	}
	if o.MaxConnections < 0 {
		return fmt.Errorf("max connections %d: must be positive", o.MaxConnections)
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = defaultFlushInterval
	}
	if o.FlushInterval < 0 {
		return fmt.Errorf("flush interval %s: must be positive", o.FlushInterval)
	}
	if o.WakeupBytes == 0 {
		o.WakeupBytes = o.RingBufferSize / 16
	}
	if o.WakeupBytes < 0 || o.WakeupBytes > o.RingBufferSize {
		return fmt.Errorf("wakeup bytes %d: must be between 1 and the ring size", o.WakeupBytes)
	}
	return nil
}

// Probe is a loaded and attached set of tcpfsm programs.
type Probe struct {
	coll     *ebpf.Collection
	prog     *ebpf.Program
	lost     *ebpf.Map
	link     link.Link
	reader   *ringbuf.Reader
	attached Attach
	flush    time.Duration
}

// Open checks what the kernel and the process can do, loads the programs
// with the filters compiled in, and attaches them.
func Open(opts Options) (_ *Probe, err error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	if err := opts.Filter.validate(); err != nil {
		return nil, err
	}
	if err := Preflight(); err != nil {
		return nil, err
	}

	spec, err := loadTcpfsm()
	if err != nil {
		return nil, err
	}
	spec.Maps[tcpfsmMapEvents].MaxEntries = uint32(opts.RingBufferSize)
	spec.Maps[tcpfsmMapConns].MaxEntries = uint32(opts.MaxConnections)
	if err := opts.Filter.apply(spec); err != nil {
		return nil, err
	}
	if err := spec.Variables[tcpfsmVarWakeupBytes].Set(uint32(opts.WakeupBytes)); err != nil {
		return nil, fmt.Errorf("set wakeup_bytes: %w", err)
	}

	p := &Probe{flush: opts.FlushInterval}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()

	modes := []Attach{opts.Attach}
	if opts.Attach == AttachAuto {
		modes = []Attach{AttachRaw, AttachTracepoint}
	}
	var errs []error
	for _, mode := range modes {
		if err := p.loadAndAttach(spec, mode); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", mode, err))
			p.closeCollection()
			continue
		}
		p.attached = mode
		break
	}
	if p.link == nil {
		return nil, explainLoadError(errors.Join(errs...))
	}

	p.reader, err = ringbuf.NewReader(p.coll.Maps[tcpfsmMapEvents])
	if err != nil {
		return nil, fmt.Errorf("open ring buffer reader: %w", err)
	}
	return p, nil
}

func (p *Probe) loadAndAttach(spec *ebpf.CollectionSpec, mode Attach) error {
	progName, other := tcpfsmProgRawInetSockSetState, tcpfsmProgTpInetSockSetState
	if mode == AttachTracepoint {
		progName, other = other, progName
	}
	// Load only the program this mode needs.
	s := spec.Copy()
	delete(s.Programs, other)
	coll, err := ebpf.NewCollection(s)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	p.coll = coll
	p.prog = coll.Programs[progName]
	p.lost = coll.Maps[tcpfsmMapLost]

	switch mode {
	case AttachRaw:
		p.link, err = link.AttachRawTracepoint(link.RawTracepointOptions{
			Name:    "inet_sock_set_state",
			Program: p.prog,
		})
	case AttachTracepoint:
		if err = ensureTracefs(); err != nil {
			return err
		}
		p.link, err = link.Tracepoint("sock", "inet_sock_set_state", p.prog, nil)
	}
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return nil
}

// Attached says which hook is in use: raw_tracepoint or tracepoint.
func (p *Probe) Attached() Attach { return p.attached }

// Read calls handle with each raw event until Stop or Close is called, or
// handle returns an error. The slice passed to handle is reused: it must
// copy what it keeps. Events wait in the ring buffer for at most the flush
// interval. After each burst, once the ring is empty, Read calls drained
// (when not nil), so callers can flush buffered output.
func (p *Probe) Read(handle func(raw []byte) error, drained func() error) error {
	var rec ringbuf.Record
	p.reader.SetDeadline(time.Now().Add(p.flush))
	for {
		err := p.reader.ReadInto(&rec)
		switch {
		case err == nil:
			if err := handle(rec.RawSample); err != nil {
				return err
			}
			if rec.Remaining == 0 && drained != nil {
				if err := drained(); err != nil {
					return err
				}
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Everything the kernel submitted without a wakeup is read.
			p.reader.SetDeadline(time.Now().Add(p.flush))
		case errors.Is(err, ringbuf.ErrFlushed), errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return fmt.Errorf("read ring buffer: %w", err)
		}
	}
}

// Stop detaches the programs, so no event is produced anymore, and makes
// Read return once it has delivered every event already in the ring.
func (p *Probe) Stop() error {
	var err error
	if p.link != nil {
		err = p.link.Close()
		p.link = nil
	}
	if p.reader != nil {
		if ferr := p.reader.Flush(); ferr != nil && err == nil {
			err = ferr
		}
	}
	return err
}

// Close detaches and frees everything. A concurrent Read returns.
func (p *Probe) Close() error {
	var errs []error
	if p.link != nil {
		errs = append(errs, p.link.Close())
		p.link = nil
	}
	if p.reader != nil {
		errs = append(errs, p.reader.Close())
	}
	p.closeCollection()
	return errors.Join(errs...)
}

func (p *Probe) closeCollection() {
	if p.coll != nil {
		p.coll.Close()
	}
	p.coll, p.prog, p.lost = nil, nil, nil
}

// Lost returns how many events did not fit in the ring buffer, summed over
// CPUs, plus the times the program could not run because it was already
// running on that CPU (recursion misses): both are transitions tcpfsm
// did not see.
func (p *Probe) Lost() (LostCounts, error) {
	var lc LostCounts
	var perCPU []uint64
	if err := p.lost.Lookup(uint32(0), &perCPU); err != nil {
		return lc, fmt.Errorf("read lost counter: %w", err)
	}
	for _, n := range perCPU {
		lc.RingFull += n
	}
	if p.prog != nil {
		st, err := p.prog.Stats()
		if err != nil {
			return lc, fmt.Errorf("read program stats: %w", err)
		}
		lc.Recursion = st.RecursionMisses
	}
	return lc, nil
}

// LostCounts are transitions the tracer did not see, by reason.
type LostCounts struct {
	RingFull  uint64 // the ring buffer had no room
	Recursion uint64 // the program was busy on that CPU
}

// Total is the sum over reasons.
func (l LostCounts) Total() uint64 { return l.RingFull + l.Recursion }

// ProgramStats is the kernel's accounting for the attached program. Run
// time is only counted while BPF stats are enabled (EnableStats).
type ProgramStats struct {
	Name     string
	RunCount uint64
	RunTime  time.Duration
}

// Stats returns the attached program's run count and run time.
func (p *Probe) Stats() (ProgramStats, error) {
	if p.prog == nil {
		return ProgramStats{}, errors.New("no program loaded")
	}
	st, err := p.prog.Stats()
	if err != nil {
		return ProgramStats{}, err
	}
	name := tcpfsmProgRawInetSockSetState
	if p.attached == AttachTracepoint {
		name = tcpfsmProgTpInetSockSetState
	}
	return ProgramStats{Name: name, RunCount: st.RunCount, RunTime: st.Runtime}, nil
}
