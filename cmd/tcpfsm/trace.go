package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/settings"
	"github.com/tcpfsm/tcpfsm/exporter/jsonl"
	"github.com/tcpfsm/tcpfsm/exporter/text"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
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
}

func traceCommand(cfg *traceConfig) settings.Command {
	return settings.Command{Name: "trace", Settings: sliceOf(filters(&cfg.sel), []settings.Setting{
		outputSetting(&cfg.output, "output `FORMAT`: table, or json for one JSON object per line with every field (e.g. -o json)"),
		durationSetting(&cfg.duration, "30s, -d 5m"),
		countSetting(&cfg.count, "stop after printing `N` transitions (e.g. -n 100)"),
		attachSetting(&cfg.attach),
		noHeaderSetting(&cfg.noHeader),
	})}
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

func (p *eventPrinter) header() {
	if p.output == outputTable {
		p.w.WriteString(text.EventHeader())
		p.w.WriteByte('\n')
	}
}

// handle prints one raw event if the selection wants it.
func (p *eventPrinter) handle(raw []byte) error {
	if err := probe.Decode(raw, &p.ev); err != nil {
		p.seen++
		p.invalid++
		p.lastErr = err
		return nil
	}
	return p.print(&p.ev)
}

// print prints one decoded event if the selection wants it.
func (p *eventPrinter) print(e *probe.Event) error {
	p.seen++
	if !p.sel.kernel.Match(e) || !p.sel.match(e) {
		return nil
	}
	if p.output == outputJSON {
		p.buf = jsonl.AppendEvent(p.buf[:0], e, p.clock)
	} else {
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

func (p *eventPrinter) flush() error { return p.w.Flush() }

func runTrace(args []string, stdout, stderr io.Writer) error {
	cfg, help, err := parseTrace(args, stdout)
	if err != nil || help {
		return err
	}
	c, err := clock.Now()
	if err != nil {
		return fmt.Errorf("read clocks: %w", err)
	}
	p, err := probe.Open(probe.Options{Filter: cfg.sel.kernel, Attach: cfg.attach})
	if err != nil {
		return err
	}
	defer p.Close()
	fmt.Fprintf(stderr, "Tracing TCP state transitions (%s/inet_sock_set_state). Ctrl-C to end.\n", p.Attached())

	printer := newEventPrinter(stdout, &cfg.sel, cfg.output, c, cfg.count)
	if !cfg.noHeader {
		printer.header()
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
