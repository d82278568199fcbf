package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/settings"
	"github.com/tcpfsm/tcpfsm/exporter/jsonl"
	"github.com/tcpfsm/tcpfsm/exporter/text"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

const traceSynopsis = `Usage: tcpfsm trace [FLAGS]

Print one line per TCP state transition, as it happens: wall clock time,
the owning process, both endpoints, the transition, and the milliseconds
spent in the old state. The owner is remembered from the syscall that
created the connection (connect, listen, accept's listener), so transitions
driven by packets in softirq still name the right process; "-" means the
owner was never seen. Ctrl-C ends it and prints how many events were seen
and lost.
`

const traceExamples = `  tcpfsm trace                         every transition on this host
  tcpfsm trace -L 443 --state CLOSE     connections to local port 443 ending
  tcpfsm trace -p 1234 -o json -n 100   100 transitions of process 1234 as JSON lines
  tcpfsm trace --netns myns -d 30s      30 seconds of network namespace "myns"
`

type traceConfig struct {
	sel      selection
	output   outputFormat
	duration time.Duration
	count    int
	attach   probe.Attach
	noHeader bool
	meta     metaConfig
}

func traceCommand(cfg *traceConfig) settings.Command {
	return settings.Command{Name: "trace", Settings: sliceOf(filters(&cfg.sel), []settings.Setting{
		outputSetting(&cfg.output, "output `FORMAT`: table, or json for one JSON object per line with every field (e.g. -o json)"),
		durationSetting(&cfg.duration, "30s, -d 5m"),
		countSetting(&cfg.count, "stop after printing `N` transitions (e.g. -n 100)"),
		attachSetting(&cfg.attach),
		noHeaderSetting(&cfg.noHeader),
	}, metaSettings(&cfg.meta, false))}
}

func parseTrace(args []string, usage io.Writer) (cfg traceConfig, help bool, err error) {
	fs, help, err := parseCommand(traceCommand(&cfg), args, usage, traceSynopsis, traceExamples)
	if err != nil || help {
		return cfg, help, err
	}
	return cfg, false, noArguments(fs)
}

// errCountReached ends the read loop once -n events are printed.
var errCountReached = errors.New("count reached")

// eventPrinter formats events to a buffered writer. It is the part of
// trace that needs no kernel.
type eventPrinter struct {
	w       *bufio.Writer
	sel     *selection
	output  outputFormat
	clock   clock.Clock
	limit   int // 0: no limit
	buf     []byte
	ev      probe.Event
	seen    uint64 // events received
	shown   uint64 // events printed
	invalid uint64 // records that did not decode
	lastErr error
	// container: the table ends with the container column; owners names
	// the containers of a live trace (a replay hands the names in).
	container bool
	owners    *eventOwners
	header    bool // wanted, not written yet
}

func newEventPrinter(w io.Writer, sel *selection, output outputFormat, c clock.Clock, limit int) *eventPrinter {
	return &eventPrinter{
		w:      bufio.NewWriterSize(w, 64<<10),
		sel:    sel,
		output: output,
		clock:  c,
		limit:  limit,
		buf:    make([]byte, 0, 512),
	}
}

// wantHeader asks for the table's header: it is written with the first
// line, or at the first flush, once the container column is decided.
func (p *eventPrinter) wantHeader() { p.header = p.output == outputTable }

func (p *eventPrinter) writeHeader() {
	if !p.header {
		return
	}
	p.header = false
	if p.container {
		p.w.WriteString(text.EventHeaderContainer())
	} else {
		p.w.WriteString(text.EventHeader())
	}
	p.w.WriteByte('\n')
}

// handle prints one raw event if the selection wants it.
func (p *eventPrinter) handle(raw []byte) error {
	err := probe.Decode(raw, &p.ev)
	if err == nil {
		return p.print(&p.ev)
	}
	// An invalid event is counted and said at the end (lastErr); the
	// trace goes on with the next one.
	p.seen++
	p.invalid++
	p.lastErr = err
	return nil
}

// print prints one decoded event if the selection wants it, with what
// the live trace knows of its owner's container.
func (p *eventPrinter) print(e *probe.Event) error {
	return p.printMeta(e, p.owners.of(e))
}

// printMeta prints one event with m, what is known of its owner's
// container (nil: not in one, or nothing known).
func (p *eventPrinter) printMeta(e *probe.Event, m *metadata.Meta) error {
	p.seen++
	if !p.sel.kernelMatch(e, "", false) || !p.sel.match(e) || !p.sel.meta.match(named(m)) {
		return nil
	}
	p.writeHeader()
	switch {
	case p.output == outputJSON:
		p.buf = jsonl.AppendEventMeta(p.buf[:0], e, p.clock, m)
	case p.container:
		p.buf = text.AppendEventRowContainer(p.buf[:0], e, p.clock, "", m)
	default:
		p.buf = text.AppendEventRow(p.buf[:0], e, p.clock)
	}
	if _, err := p.w.Write(p.buf); err != nil {
		p.lastErr = err
		return err
	}
	p.shown++
	if p.limit > 0 && p.shown >= uint64(p.limit) {
		return errCountReached
	}
	return nil
}

func (p *eventPrinter) flush() error {
	p.writeHeader()
	return p.w.Flush()
}

func runTrace(args []string, stdout, stderr io.Writer) error {
	cfg, help, err := parseTrace(args, stdout)
	if err != nil || help {
		return err
	}
	c, err := clock.Now()
	if err != nil {
		return fmt.Errorf("read clocks: %w", err)
	}
	names, err := cfg.meta.open(cliLogger(stderr))
	if err != nil {
		return err
	}
	if names != nil {
		defer names.Close()
	}
	if err := resolvePod(&cfg.sel, names); err != nil {
		return err
	}
	cfg.sel.live = true
	p, err := probe.Open(probe.Options{Filter: cfg.sel.kernel, Attach: cfg.attach})
	if err != nil {
		return err
	}
	defer p.Close()
	fmt.Fprintf(stderr, "Tracing TCP state transitions (%s/inet_sock_set_state). Ctrl-C to end.\n", p.Attached())
	reportNames(stderr, names)

	printer := newEventPrinter(stdout, &cfg.sel, cfg.output, c, cfg.count)
	if names != nil {
		// trace never waits: it prints what the runtime told so far, so
		// the first list is worth a moment.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = names.WaitSynced(ctx) // a slower runtime's names come as it answers
		cancel()
		printer.container = true
		printer.owners = newEventOwners(names, cfg.meta.labels)
	}
	if !cfg.noHeader {
		printer.wantHeader()
	}

	// Stop on a signal or at the end of -d: detach, then drain what the
	// kernel already produced. Say so as soon as transitions go missing.
	var reported uint64
	stop := stopOn(p, cfg.duration, func() {
		if lc, err := p.Lost(); err == nil && lc.Total() > reported {
			fmt.Fprintf(stderr, "WARNING: %d transitions lost so far (ring buffer full: %d, program busy: %d)\n",
				lc.Total(), lc.RingFull, lc.Recursion)
			reported = lc.Total()
		}
	})
	readErr := p.Read(printer.handle, printer.flush)
	stop()
	if errors.Is(readErr, errCountReached) {
		readErr = nil
	}
	if err := printer.flush(); err != nil && readErr == nil {
		readErr = fmt.Errorf("write output: %w", err)
	}

	lc, lerr := p.Lost()
	if lerr != nil {
		return lerr
	}
	fmt.Fprintf(stderr, "\n%d transitions seen, %d shown, %d lost (ring buffer full: %d, program busy: %d)\n",
		printer.seen, printer.shown, lc.Total(), lc.RingFull, lc.Recursion)
	if printer.invalid > 0 {
		fmt.Fprintf(stderr, "%d records could not be decoded, last: %v\n", printer.invalid, printer.lastErr)
	}
	return readErr
}
