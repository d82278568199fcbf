package main

import (
	"bufio"
	"fmt"
	"io"
	"time"

	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/settings"
	"github.com/tcpfsm/tcpfsm/exporter/jsonl"
	"github.com/tcpfsm/tcpfsm/exporter/text"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

const lifeSynopsis = `Usage: tcpfsm life [FLAGS]

Print one line per finished TCP connection: owner, endpoints, role,
handshake and lifetime in ms, payload bytes each way, who closed it
(local, remote, both) and how (graceful, reset_sent, reset_received,
refused, connect_timeout, timeout, aborted_before_established,
simultaneous, fin_wait2_timeout and fin_wait2_aborted: the peer's FIN never
came), and its TIME_WAIT in ms. A connection closed by its owner before the
peer's FIN is in FIN_WAIT2 until that FIN comes. A connection that went through
TIME_WAIT is printed when TIME_WAIT ends, up to 60 s after its close
(--at-close prints it at once). "~" marks a TIME_WAIT whose end could
only be assumed; -o json gives the whole record with every state's
dwell time. --ladder draws both ends of connections whose two ends are on
this host.
`

const lifeExamples = `  tcpfsm life                          every connection as it finishes
  tcpfsm life -D 5432 -o json           connections to PostgreSQL, full records
  tcpfsm life --ladder -L 8080          handshake and close of connections to local port 8080
  tcpfsm life --at-close -n 20          the next 20 connections to close, at their close
`

// lifeOptions are what life and replay --view life|ladder share.
type lifeOptions struct {
	sel     selection
	output  outputFormat
	ladder  bool
	atClose bool
	all     bool
	count   int
	// container: the table ends with the container column (containers
	// are named: a runtime's socket, or a recording that had one).
	container bool
}

// lifePrinter prints records as the builder hands them out.
type lifePrinter struct {
	opts    *lifeOptions
	w       *bufio.Writer
	clock   clock.Clock
	buf     []byte
	shown   int
	err     error
	pending map[ladderKey]lifecycle.Record // one end, waiting for the other
	order   []ladderKey
	onLimit func()
	// header is wanted and not written yet: it is written with the first
	// row, or at the first flush, once the container column is decided.
	header bool
}

// ladderKey is a connection's endpoints, the same for both ends.
type ladderKey struct {
	family       uint8
	a, b         [16]byte
	aPort, bPort uint16
}

func keyOf(r *lifecycle.Record) ladderKey {
	k := ladderKey{family: r.Family, a: r.Laddr, b: r.Raddr, aPort: r.Lport, bPort: r.Rport}
	if string(k.a[:]) > string(k.b[:]) || (k.a == k.b && k.aPort > k.bPort) {
		k.a, k.b, k.aPort, k.bPort = k.b, k.a, k.bPort, k.aPort
	}
	return k
}

const maxPendingLadders = 4096

func newLifePrinter(w io.Writer, opts *lifeOptions, c clock.Clock) *lifePrinter {
	return &lifePrinter{opts: opts, w: bufio.NewWriterSize(w, 64<<10), clock: c, buf: make([]byte, 0, 2048),
		pending: map[ladderKey]lifecycle.Record{}}
}

// wantHeader asks for the table's header.
func (p *lifePrinter) wantHeader() {
	p.header = p.opts.output == outputTable && !p.opts.ladder
}

func (p *lifePrinter) writeHeader() {
	if !p.header {
		return
	}
	p.header = false
	if p.opts.container {
		p.w.WriteString(text.LifeHeaderContainer())
	} else {
		p.w.WriteString(text.LifeHeader())
	}
	p.w.WriteByte('\n')
}

func (p *lifePrinter) Closed(r *lifecycle.Record) {
	if p.opts.atClose {
		p.print(r)
	}
}

func (p *lifePrinter) Finished(r *lifecycle.Record) {
	// At close, records with a TIME_WAIT were printed already; the rest
	// (no TIME_WAIT, evicted, still open at the end) only come out here.
	if p.opts.atClose && r.End != 0 && r.Kind != lifecycle.KindEvicted {
		return
	}
	p.print(r)
}

func (p *lifePrinter) wants(r *lifecycle.Record) bool {
	if !p.opts.all && (r.Role == lifecycle.RoleListener || r.End == 0 && r.Kind == lifecycle.KindOpen) {
		return false
	}
	s := &p.opts.sel
	if s.comm != "" && (!r.OwnerKnown() || string(r.CommBytes()) != s.comm) {
		return false
	}
	if s.any {
		through := false
		for _, sp := range r.SpanList() {
			through = through || s.states[sp.State&15]
		}
		if !through && !(s.states[probe.StateClose] && r.End != 0) {
			return false
		}
	}
	if !s.meta.match(r.Meta) {
		return false
	}
	e := probe.Event{Family: r.Family, Sport: r.Lport, Dport: r.Rport, Netns: r.NetNS, Pid: r.Pid, CgroupId: r.CgroupID, Owner: uint8(r.Owner)}
	return s.kernelMatch(&e, r.Cgroup, true)
}

func (p *lifePrinter) print(r *lifecycle.Record) {
	if p.err != nil || !p.wants(r) || (p.opts.count > 0 && p.shown >= p.opts.count) {
		return
	}
	p.writeHeader()
	if p.opts.ladder {
		k := keyOf(r)
		other, ok := p.pending[k]
		if !ok || !text.Pair(r, &other) {
			if len(p.pending) >= maxPendingLadders {
				// Ends whose peer is not on this host never pair.
				delete(p.pending, p.order[0])
				p.order = p.order[1:]
			}
			p.pending[k] = *r
			p.order = append(p.order, k)
			return
		}
		delete(p.pending, k)
		p.buf = text.AppendLadder(p.buf[:0], &other, r)
	} else if p.opts.output == outputJSON {
		p.buf = jsonl.AppendRecord(p.buf[:0], r, p.clock)
	} else if p.opts.container {
		p.buf = text.AppendLifeRowContainer(p.buf[:0], r, p.clock)
	} else {
		p.buf = text.AppendLifeRow(p.buf[:0], r, p.clock)
	}
	if _, err := p.w.Write(p.buf); err != nil {
		p.err = err
		return
	}
	p.shown++
	if p.opts.count > 0 && p.shown == p.opts.count && p.onLimit != nil {
		p.onLimit()
	}
}

func (p *lifePrinter) flush() error {
	if p.err != nil {
		return p.err
	}
	p.writeHeader()
	return p.w.Flush()
}

// settings are the flags life and replay share.
func (o *lifeOptions) settings() []settings.Setting {
	return []settings.Setting{
		&settings.Bool{Spec: settings.Spec{Flag: "ladder",
			Help: "draw connections whose two ends are on this host as a ladder diagram: handshake and close, side by side, with real time offsets"},
			To: func(v bool) error { o.ladder = v; return nil }},
		&settings.Bool{Spec: settings.Spec{Flag: "at-close",
			Help: "print each connection when it closes, without waiting for the end of its TIME_WAIT"},
			To: func(v bool) error { o.atClose = v; return nil }},
		&settings.Bool{Spec: settings.Spec{Flag: "all",
			Help: "also print listeners and connections still open when tcpfsm stops"},
			To: func(v bool) error { o.all = v; return nil }},
	}
}

// lifeConfig is what life runs with.
type lifeConfig struct {
	lifeOptions
	duration  time.Duration
	attach    probe.Attach
	lifecycle lifecycle.Config
	meta      metaConfig
}

func lifeCommand(c *lifeConfig) settings.Command {
	return settings.Command{Name: "life", Settings: sliceOf(filters(&c.sel), []settings.Setting{
		outputSetting(&c.output, "output `FORMAT`: table, or json for one whole record per line (e.g. -o json)")},
		c.lifeOptions.settings(), []settings.Setting{
			durationSetting(&c.duration, "5m"),
			countSetting(&c.count, "stop after printing `N` connections"),
			attachSetting(&c.attach),
			maxTrackedSetting(&c.lifecycle),
		}, metaSettings(&c.meta, true))}
}

func runLife(args []string, stdout, stderr io.Writer) error {
	var c lifeConfig
	fs, help, err := parseCommand(lifeCommand(&c), args, stdout, lifeSynopsis, lifeExamples)
	o, duration, attach, lcfg := &c.lifeOptions, c.duration, c.attach, c.lifecycle
	if err != nil || help {
		return err
	}
	if err := noArguments(fs); err != nil {
		return err
	}
	if o.ladder && o.output == outputJSON {
		return usagef("--ladder draws text: it excludes -o json")
	}

	clk, err := clock.Now()
	if err != nil {
		return err
	}
	names, err := c.meta.open(cliLogger(stderr))
	if err != nil {
		return err
	}
	if names != nil {
		defer names.Close()
	}
	if err := resolvePod(&o.sel, names); err != nil {
		return err
	}
	o.sel.live = true
	o.container = names != nil
	printer := newLifePrinter(stdout, o, clk)
	opts := session.Options{
		Probe:      probe.Options{Filter: o.sel.kernel, Attach: attach},
		Lifecycle:  lcfg,
		NetNSPaths: o.sel.netnsPaths(),
		Handler:    printer,
		OnDrained:  printer.flush,
	}
	if names != nil {
		opts.Metadata = names
		c.meta.sessionOptions(&opts)
	}
	s, err := session.Open(opts)
	if err != nil {
		return err
	}
	defer s.Close()
	printer.clock = s.Clock()
	// Reaching the limit ends the run like Ctrl-C; what Stop fails to
	// detach the deferred Close frees.
	printer.onLimit = func() { _ = s.Stop() }
	fmt.Fprintf(stderr, "Tracing TCP connection lifecycles (%s). Ctrl-C to end.\n", s.Probe().Attached())
	reportMissing(stderr, s.Probe().Features())
	reportNames(stderr, names)
	for _, w := range s.Warnings() {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	printer.wantHeader()

	stop := stopOn(s.Probe(), duration, nil)
	runErr := s.Run()
	stop()
	if err := printer.flush(); err != nil && runErr == nil {
		runErr = err
	}
	lc, _ := s.Probe().Lost()
	var st lifecycle.Stats
	s.With(func(b *lifecycle.Builder) { st = b.Stats() })
	fmt.Fprintf(stderr, "\n%d connections printed; %d events, %d lost; %d evicted; %d anomalies\n",
		printer.shown, st.Events, lc.Total(), st.Evictions[lifecycle.EvictCap]+st.Evictions[lifecycle.EvictHandshakeTimeout],
		sum(st.Anomalies[:]))
	return runErr
}

// reportNames says where container names come from.
func reportNames(w io.Writer, r *metadata.Resolver) {
	if r != nil {
		fmt.Fprintf(w, "Naming containers from %s.\n", describeSources(r))
	}
}

// reportMissing says which optional kernel parts are unavailable and what
// replaces them.
func reportMissing(w io.Writer, f probe.Features) {
	if !f.TimeWait {
		fmt.Fprintln(w, "note: TIME_WAIT is reconstructed from transitions and sock_diag (no BPF trampolines on this kernel for its exact end)")
	}
	if !f.Resets {
		fmt.Fprintln(w, "note: reset tracepoints unavailable: closes are classified from socket errors alone")
	}
	if !f.SynRetransmits {
		fmt.Fprintln(w, "note: tcp_retransmit_skb unavailable: SYN retransmits are not counted")
	}
}

func sum(xs []uint64) uint64 {
	var n uint64
	for _, x := range xs {
		n += x
	}
	return n
}
