// Package probe loads tcpfsm's BPF programs, attaches them to the kernel's
// inet_sock_set_state tracepoint and hands the raw events they produce to
// its caller. It also defines the event type and decodes it.
package probe

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
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

// Probe is a loaded and attached set of tcpfsm programs.
type Probe struct {
	coll     *ebpf.Collection
	extra    []*ebpf.Collection // optional programs loaded on their own
	progs    map[string]*ebpf.Program
	links    []link.Link
	reader   *ringbuf.Reader
	attached Attach
	features Features
	flush    time.Duration
	filter   Filter // its cgroup part, for seeded listeners
	cgroups  *cgroups.Resolver
	lost     lostState
}

// Features says which optional parts of tcpfsm the kernel accepted.
type Features struct {
	// Resets: tcp:tcp_send_reset and tcp:tcp_receive_reset events.
	Resets bool
	// SynRetransmits: tcp:tcp_retransmit_skb events during the handshake.
	SynRetransmits bool
	// TimeWait: fentry on tcp_time_wait and inet_twsk_kill (BPF
	// trampolines): the CLOSE into TIME_WAIT is flagged and the end of
	// TIME_WAIT is an event. Without it both are reconstructed.
	TimeWait bool
	// AcceptOwner: fexit on inet_csk_accept names the accepting process
	// as soon as it accepts.
	AcceptOwner bool
	// Missing explains what the kernel refused, one line each.
	Missing []string
}

// Programs on other hooks than inet_sock_set_state, attached as raw
// tracepoints whatever the attach mode: the classic tracepoints' context
// layouts of these differ between kernels, the raw arguments do not.
var extraRawTracepoints = []struct{ prog, tracepoint string }{
	{tcpfsmProgRawTcpSendReset, "tcp_send_reset"},
	{tcpfsmProgRawTcpReceiveReset, "tcp_receive_reset"},
	{tcpfsmProgRawTcpRetransmitSkb, "tcp_retransmit_skb"},
}

// Programs that need BPF trampolines (program type tracing).
var tracingPrograms = []string{
	tcpfsmProgFentryTcpTimeWait,
	tcpfsmProgFentryInetTwskKill,
	tcpfsmProgFexitInetCskAccept,
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

	p := &Probe{flush: opts.FlushInterval, filter: opts.Filter}
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
			p.closeAll()
			continue
		}
		p.attached = mode
		break
	}
	if p.attached == "" {
		return nil, explainLoadError(errors.Join(errs...))
	}
	p.attachExtras(spec)

	p.reader, err = ringbuf.NewReader(p.coll.Maps[tcpfsmMapEvents])
	if err != nil {
		return nil, fmt.Errorf("open ring buffer reader: %w", err)
	}
	return p, nil
}

// loadAndAttach loads the maps and the programs every kernel with ring
// buffers runs, and attaches the state program in the given mode.
func (p *Probe) loadAndAttach(spec *ebpf.CollectionSpec, mode Attach) error {
	progName, other := tcpfsmProgRawInetSockSetState, tcpfsmProgTpInetSockSetState
	if mode == AttachTracepoint {
		progName, other = other, progName
	}
	s := spec.Copy()
	delete(s.Programs, other)
	if mode != AttachRaw {
		// Only raw tracepoint programs have a guard of their own.
		delete(s.Programs, tcpfsmProgRawNestedInetSockSetState)
	}
	for _, name := range tracingPrograms {
		delete(s.Programs, name)
	}
	coll, err := ebpf.NewCollection(s)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	p.coll = coll
	p.progs = map[string]*ebpf.Program{}
	for name, prog := range coll.Programs {
		p.progs[name] = prog
	}

	var l link.Link
	switch mode {
	case AttachRaw:
		l, err = link.AttachRawTracepoint(link.RawTracepointOptions{
			Name:    "inet_sock_set_state",
			Program: p.progs[progName],
		})
	case AttachTracepoint:
		if err = ensureTracefs(); err != nil {
			return err
		}
		l, err = link.Tracepoint("sock", "inet_sock_set_state", p.progs[progName], nil)
	}
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	p.links = append(p.links, l)
	if mode == AttachRaw {
		// After the main program: the kernel runs a tracepoint's programs
		// in the order they were attached, and the nested instance only
		// acts when the main one, already busy on the CPU, was skipped.
		l, err = link.AttachRawTracepoint(link.RawTracepointOptions{
			Name:    "inet_sock_set_state",
			Program: p.progs[tcpfsmProgRawNestedInetSockSetState],
		})
		if err != nil {
			return fmt.Errorf("attach the nested instance: %w", err)
		}
		p.links = append(p.links, l)
		// The calls the main program noted before the nested instance
		// was there are never dropped: clear them, lest a later call
		// with the same socket address and states matches one. (A call
		// noted this very moment is then handled twice, once.)
		if err := p.clearNest(); err != nil {
			return err
		}
	}
	return nil
}

// attachExtras attaches what refines the lifecycle but is not needed for
// transitions: a kernel that refuses one loses that refinement only.
func (p *Probe) attachExtras(spec *ebpf.CollectionSpec) {
	f := &p.features
	ok := map[string]bool{}
	for _, x := range extraRawTracepoints {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: x.tracepoint, Program: p.progs[x.prog]})
		if err != nil {
			f.Missing = append(f.Missing, fmt.Sprintf("tcp:%s: %v", x.tracepoint, err))
			continue
		}
		p.links = append(p.links, l)
		ok[x.prog] = true
	}
	f.Resets = ok[tcpfsmProgRawTcpSendReset] && ok[tcpfsmProgRawTcpReceiveReset]
	f.SynRetransmits = ok[tcpfsmProgRawTcpRetransmitSkb]

	// Tracing programs share the maps already loaded.
	replace := map[string]*ebpf.Map{}
	for name, m := range p.coll.Maps {
		replace[name] = m
	}
	for _, name := range tracingPrograms {
		s := spec.Copy()
		s.Programs = map[string]*ebpf.ProgramSpec{name: s.Programs[name]}
		coll, err := ebpf.NewCollectionWithOptions(s, ebpf.CollectionOptions{MapReplacements: replace})
		if err != nil {
			f.Missing = append(f.Missing, fmt.Sprintf("%s: %v", name, firstLine(err)))
			continue
		}
		l, err := link.AttachTracing(link.TracingOptions{Program: coll.Programs[name]})
		if err != nil {
			coll.Close()
			f.Missing = append(f.Missing, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		p.extra = append(p.extra, coll)
		p.links = append(p.links, l)
		p.progs[name] = coll.Programs[name]
		ok[name] = true
	}
	f.TimeWait = ok[tcpfsmProgFentryTcpTimeWait] && ok[tcpfsmProgFentryInetTwskKill]
	f.AcceptOwner = ok[tcpfsmProgFexitInetCskAccept]
}

// firstLine keeps a verifier error to its summary.
func firstLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// Features says which optional programs are attached.
func (p *Probe) Features() Features { return p.features }

// Attached says which hook is in use: raw_tracepoint or tracepoint.
func (p *Probe) Attached() Attach { return p.attached }

// Read calls handle with each raw event until Stop or Close is called, or
// handle returns an error. The slice passed to handle is reused: it must
// copy what it keeps. Events wait in the ring buffer for at most the flush
// interval. Read calls drained (when not nil) each time it has emptied
// the ring, and at least once per flush interval when idle, so callers
// can flush output and move their clocks.
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
				// Yield at each drain: a reader that never yields keeps
				// the runtime's monitor thread (sysmon) at its shortest
				// sleep, 20 us, preempting it and retaking its P (under
				// full churn 3,800 of its wakeups in 3 s, 550 with this;
				// context switches -40 %, the agent's CPU -5 to -9 %).
				// A yield with nothing else to run costs well under a
				// microsecond.
				runtime.Gosched()
				if err := drained(); err != nil {
					return err
				}
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Everything the kernel submitted without a wakeup is read.
			p.reader.SetDeadline(time.Now().Add(p.flush))
			if drained != nil {
				if err := drained(); err != nil {
					return err
				}
			}
		case errors.Is(err, ringbuf.ErrFlushed):
			// Stop: the ring is empty and nothing more comes.
			if drained != nil {
				return drained()
			}
			return nil
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return fmt.Errorf("read ring buffer: %w", err)
		}
	}
}

// Stop detaches the programs, so no event is produced anymore, and makes
// Read return once it has delivered every event already in the ring.
func (p *Probe) Stop() error {
	err := p.detach()
	if p.reader != nil {
		if ferr := p.reader.Flush(); ferr != nil && err == nil {
			err = ferr
		}
	}
	return err
}

func (p *Probe) detach() error {
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	return errors.Join(errs...)
}

// Close detaches and frees everything. A concurrent Read returns.
func (p *Probe) Close() error {
	errs := []error{p.detach()}
	if p.reader != nil {
		errs = append(errs, p.reader.Close())
	}
	p.closeAll()
	return errors.Join(errs...)
}

func (p *Probe) closeAll() {
	// Close has detached already and returns that error; a failed load
	// has nothing else to report it to.
	_ = p.detach()
	for _, c := range p.extra {
		c.Close()
	}
	if p.coll != nil {
		p.coll.Close()
	}
	p.coll, p.extra, p.progs = nil, nil, nil
}

// inFilterCgroup reports whether a cgroup is the filter's cgroup or
// below it: its ancestor at the filter's level is the filter's cgroup.
func (p *Probe) inFilterCgroup(id uint64) bool {
	if id == 0 {
		return false
	}
	if p.cgroups == nil {
		p.cgroups = cgroups.NewResolver("")
	}
	path, ok := p.cgroups.Path(id)
	if !ok {
		return false
	}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	level := int(p.filter.CgroupLevel)
	if path == "/" || len(parts) < level {
		return false
	}
	anc, _, err := cgroups.Lookup(strings.Join(parts[:level], "/"))
	return err == nil && anc == p.filter.CgroupID
}

// SeedListener tells the kernel side who owns a listener that existed
// before tcpfsm started, so the connections it accepts get that owner.
func (p *Probe) SeedListener(netns uint32, port uint16, pid uint32, comm string, cgroupID uint64) error {
	key := tcpfsmListenerKey{Netns: netns, Port: port}
	var val tcpfsmListener
	val.Owner.Who.Pid, val.Owner.Who.Tid, val.Owner.Who.CgroupId = pid, pid, cgroupID
	copy(val.Owner.Who.Comm[:15], comm)
	val.Owner.Source = uint8(OwnerTask)
	if p.filter.CgroupID != 0 && p.inFilterCgroup(cgroupID) {
		// What listen() would have found: the connections it accepts pass
		// the cgroup filter as the listener's own events would.
		val.Owner.InCgroup = 1
	}
	// The socket pointer is unknown: the entry is replaced when a new
	// listener on the port appears, and ages out of the LRU otherwise.
	return p.coll.Maps[tcpfsmMapListeners].Update(&key, &val, ebpf.UpdateNoExist)
}
