package main

import (
	"errors"

	"github.com/spf13/pflag"

	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/record"
)

const recordSynopsis = `Usage: tcpfsm record -w FILE [FLAGS]

Write every raw TCP state transition event to FILE, to be read back later
with 'tcpfsm replay' on any machine and without privileges. The file starts
with a header (format version, kernel release, boot time for wall clock
conversion); lost-event counts are recorded too. It is flushed after every
burst of events, so an interrupted recording keeps all it had.
`

const recordExamples = `  tcpfsm record -w /tmp/tcp.rec -d 60s
  tcpfsm record -w /tmp/web.rec -L 80,443 -n 10000
`

func runRecord(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("record")
	var ff filterFlags
	ff.register(fs)
	path := fs.StringP("write", "w", "", "write the recording to `FILE` (required; e.g. -w /tmp/tcp.rec)")
	duration := fs.DurationP("duration", "d", 0, "stop after this `DURATION` (e.g. -d 60s)")
	count := fs.IntP("count", "n", 0, "stop after recording `N` events (e.g. -n 10000)")
	attach := fs.String("attach", "auto", "`HOOK` for inet_sock_set_state: auto, raw_tracepoint or tracepoint")
	if help, err := parseFlags(fs, args); err != nil || help {
		if help {
			printUsage(stdout, fs, recordSynopsis, recordExamples)
		}
		return err
	}
	sel, err := ff.resolve()
	if err != nil {
		return err
	}
	if sel.comm != "" || sel.any {
		return usagef("--comm and --state select at replay time; record keeps every event the kernel filters pass")
	}
	if *path == "" {
		return usagef("--write FILE is required")
	}
	if fs.Changed("duration") && *duration <= 0 {
		return usagef("invalid --duration %s: want a positive duration such as 60s", *duration)
	}
	if fs.Changed("count") && *count <= 0 {
		return usagef("invalid --count %d: want a number above 0", *count)
	}
	mode, err := probe.ParseAttach(*attach)
	if err != nil {
		return usagef("invalid --attach: %v", err)
	}

	c, err := clock.Now()
	if err != nil {
		return fmt.Errorf("read clocks: %w", err)
	}
	p, err := probe.Open(probe.Options{Filter: sel.kernel, Attach: mode})
	if err != nil {
		return err
	}
	defer p.Close()

	f, err := os.OpenFile(*path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	host, _ := os.Hostname()
	w, err := record.NewWriter(f, record.Header{
		EventSize:     uint16(probe.EventSize),
		BootNs:        c.BootNs,
		Created:       time.Now(),
		KernelRelease: probe.KernelRelease(),
		Hostname:      host,
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", *path, err)
	}
	fmt.Fprintf(stderr, "Recording TCP state transitions (%s) to %s. Ctrl-C to end.\n", p.Attached(), *path)

	rec := &recorder{w: w, p: p, limit: uint64(*count)}
	stop := stopOn(p, *duration, nil)
	readErr := p.Read(rec.handle, rec.flush)
	stop()
	if errors.Is(readErr, errCountReached) {
		readErr = nil
	}
	// Whatever happened, keep what was recorded.
	ferr := rec.finish()
	if ferr == nil {
		ferr = f.Sync()
	}
	if readErr == nil && ferr != nil {
		readErr = fmt.Errorf("write %s: %w", *path, ferr)
	}
	fmt.Fprintf(stderr, "\n%d events recorded, %d lost (ring buffer full: %d, program busy: %d)\n",
		rec.n, rec.lost.Total(), rec.lost.RingFull, rec.lost.Recursion)
	return readErr
}

// recorder writes raw events and, when they change, the lost counters.
type recorder struct {
	w     *record.Writer
	p     *probe.Probe
	limit uint64
	n     uint64
	lost  probe.LostCounts
	ev    probe.Event
}

func (r *recorder) handle(raw []byte) error {
	// Only events this build can read back are written.
	if err := probe.Decode(raw, &r.ev); err != nil {
		return fmt.Errorf("event %d: %w", r.n, err)
	}
	if err := r.w.Write(record.KindEvent, raw[:probe.EventSize]); err != nil {
		return err
	}
	r.n++
	if r.limit > 0 && r.n >= r.limit {
		return errCountReached
	}
	return nil
}

// flush runs after each burst: note new losses, push the burst to the file.
func (r *recorder) flush() error {
	if err := r.noteLost(); err != nil {
		return err
	}
	return r.w.Flush()
}

func (r *recorder) noteLost() error {
	lc, err := r.p.Lost()
	if err != nil {
		return err
	}
	if lc == r.lost {
		return nil
	}
	r.lost = lc
	return r.w.WriteLost(lc.RingFull, lc.Recursion)
}

func (r *recorder) finish() error {
	err := r.noteLost()
	if ferr := r.w.Flush(); err == nil {
		err = ferr
	}
	return err
}

// stopOn stops the probe on SIGINT, SIGTERM or after d (when not zero),
// and calls tick (when not nil) every second meanwhile. The returned
// function ends the watch.
func stopOn(p *probe.Probe, d time.Duration, tick func()) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		defer signal.Stop(sig)
		var timeout <-chan time.Time
		if d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			timeout = t.C
		}
		ticker := time.NewTicker(time.Second)
		defer ticker.Stop()
		for {
			select {
			case <-sig:
			case <-timeout:
			case <-done:
				return
			case <-ticker.C:
				if tick != nil {
					tick()
				}
				continue
			}
			p.Stop()
			return
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

const replaySynopsis = `Usage: tcpfsm replay [FLAGS] FILE

Read a recording made by 'tcpfsm record' and print it as 'tcpfsm trace'
would have, with the recording's own wall clock. Needs no privileges.
All selection flags apply; --cgroup matches the exact cgroup only.
`

const replayExamples = `  tcpfsm replay /tmp/tcp.rec
  tcpfsm replay -o json --state CLOSE /tmp/tcp.rec
`

func runReplay(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("replay")
	var ff filterFlags
	ff.register(fs)
	output := fs.StringP("output", "o", "table", "output `FORMAT`: table or json")
	count := fs.IntP("count", "n", 0, "stop after printing `N` transitions")
	noHeader := fs.Bool("no-header", false, "omit the table header")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			printUsage(stdout, fs, replaySynopsis, replayExamples)
			return nil
		}
		return usagef("%v", err)
	}
	if fs.NArg() != 1 {
		return usagef("want exactly one recording FILE, got %d arguments", fs.NArg())
	}
	sel, err := ff.resolve()
	if err != nil {
		return err
	}
	out, err := parseOutput(*output)
	if err != nil {
		return err
	}
	if fs.Changed("count") && *count <= 0 {
		return usagef("invalid --count %d: want a number above 0", *count)
	}

	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	rd, err := record.NewReader(f, probe.EventSize)
	if err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	h := rd.Header()
	printer := newEventPrinter(stdout, &sel, out, clock.Clock{BootNs: h.BootNs}, *count)
	if !*noHeader {
		printer.header()
	}
	var lost probe.LostCounts
	var readErr error
	for {
		kind, payload, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			readErr = fmt.Errorf("%s: %w", fs.Arg(0), err)
			break
		}
		switch kind {
		case record.KindEvent:
			err = printer.handle(payload)
		case record.KindLost:
			lost.RingFull, lost.Recursion = record.Lost(payload)
		}
		if errors.Is(err, errCountReached) {
			break
		}
		if err != nil {
			readErr = err
			break
		}
		if printer.invalid > 0 {
			readErr = fmt.Errorf("%s: record before offset %d: %w", fs.Arg(0), rd.Offset(), printer.lastErr)
			break
		}
	}
	if err := printer.flush(); err != nil && readErr == nil {
		readErr = err
	}
	fmt.Fprintf(stderr, "\n%d transitions read, %d shown, %d lost while recording (kernel %s, host %s)\n",
		printer.seen, printer.shown, lost.Total(), h.KernelRelease, h.Hostname)
	return readErr
}
