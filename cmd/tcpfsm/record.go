package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/settings"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

const recordSynopsis = `Usage: tcpfsm record -w FILE [FLAGS]

Write every raw TCP state transition event to FILE, to be read back later
with 'tcpfsm replay' on any machine and without privileges. The file starts
with a header (format version, kernel release, boot time for wall clock
conversion); lost-event counts are recorded too, and what the container
runtime said of the containers seen, so replays name them. It is flushed
after every burst of events, so an interrupted recording keeps all it had.
An existing FILE is refused unless --force. SIGINT, SIGTERM and SIGHUP end
the recording cleanly (flushed, synced). A full disk stops it with exit
status 1: the file then ends at its last whole record and replays without
an error.
`

const recordExamples = `  tcpfsm record -w /tmp/tcp.rec -d 60s
  tcpfsm record -w /tmp/web.rec -L 80,443 -n 10000
`

// recordConfig is what record runs with.
type recordConfig struct {
	sel      selection
	path     string
	force    bool
	duration time.Duration
	count    int
	attach   probe.Attach
	meta     metaConfig
}

func recordCommand(c *recordConfig) settings.Command {
	return settings.Command{Name: "record", Settings: sliceOf(filters(&c.sel), []settings.Setting{
		&settings.String{Spec: settings.Spec{Flag: "write", Short: "w",
			Help: "write the recording to `FILE` (required; e.g. -w /tmp/tcp.rec)"},
			To: func(v string) error { c.path = v; return nil }},
		&settings.Bool{Spec: settings.Spec{Flag: "force",
			Help: "replace the file given to --write if it exists (without it, an existing file is refused)"},
			To: func(v bool) error { c.force = v; return nil }},
		durationSetting(&c.duration, "60s"),
		countSetting(&c.count, "stop after recording `N` events (e.g. -n 10000)"),
		attachSetting(&c.attach),
	}, metaSettings(&c.meta, true))}
}

func runRecord(args []string, stdout, stderr io.Writer) error {
	var rc recordConfig
	fs, help, err := parseCommand(recordCommand(&rc), args, stdout, recordSynopsis, recordExamples)
	sel, path, duration, count, mode := rc.sel, rc.path, rc.duration, rc.count, rc.attach
	if err != nil || help {
		return err
	}
	if err := noArguments(fs); err != nil {
		return err
	}
	if sel.comm != "" || sel.any || sel.meta.namespace != "" || sel.meta.workloadName != "" || sel.meta.containerName != "" {
		return usagef("--comm, --state, --namespace, --workload and --container-name select at replay time; record keeps every event the kernel filters pass")
	}
	if path == "" {
		return usagef("--write FILE is required")
	}

	names, err := rc.meta.open(cliLogger(stderr))
	if err != nil {
		return err
	}
	if names != nil {
		defer names.Close()
	}
	if err := resolvePod(&sel, names); err != nil {
		return err
	}
	// A recording is hours of evidence: never replaced unasked.
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if rc.force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if errors.Is(err, os.ErrExist) {
		return usagef("--write %s: the file exists; give --force to replace it", path)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	c, err := clock.Now()
	if err != nil {
		return fmt.Errorf("read clocks: %w", err)
	}
	host, _ := os.Hostname()
	w, err := recording.NewWriter(f, recording.Header{
		EventSize:     uint16(probe.EventSize),
		BootNs:        c.BootNs,
		Created:       time.Now(),
		KernelRelease: probe.KernelRelease(),
		Hostname:      host,
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	var events uint64
	var s *session.Session
	opts := session.Options{
		Probe:      probe.Options{Filter: sel.kernel, Attach: mode},
		Clock:      c,
		NetNSPaths: sel.netnsPaths(),
		Record:     w,
		OnEvent: func(*probe.Event) {
			events++
			if count > 0 && events == uint64(count) && s != nil {
				// The count reached ends the run like Ctrl-C; what Stop
				// fails to detach the deferred Close frees.
				_ = s.Stop()
			}
		},
	}
	if names != nil {
		// The runtime's answers go into the recording: replays name
		// containers as this run did.
		opts.Metadata = names
		rc.meta.sessionOptions(&opts)
	}
	s, err = session.Open(opts)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Fprintf(stderr, "Recording TCP state transitions (%s) to %s. Ctrl-C to end.\n", s.Probe().Attached(), path)
	reportNames(stderr, names)

	stop := stopOn(s.Probe(), duration, nil)
	runErr := s.Run()
	stop()
	// Whatever happened, keep what was recorded: after a failed write
	// too, what the file holds is synced.
	werr := w.Flush()
	serr := f.Sync()
	lc, _ := s.Probe().Lost()
	kept := w.Written()
	fmt.Fprintf(stderr, "\n%d events recorded, %d lost (ring buffer full: %d, program busy: %d)\n",
		kept.Events, lc.Total(), lc.RingFull, lc.Recursion)
	if werr != nil {
		// A full disk: the file ends at the last whole record, replay
		// reads it to its end; say so rather than leave the user to
		// guess whether the file is damaged.
		return fmt.Errorf("write %s: %w: recording stopped; the file keeps the %d events (%d bytes) written before, a valid recording",
			path, werr, kept.Events, kept.Bytes)
	}
	if runErr == nil && serr != nil {
		runErr = fmt.Errorf("write %s: %w", path, serr)
	}
	return runErr
}

const replaySynopsis = `Usage: tcpfsm replay [FLAGS] FILE

Read a recording made by 'tcpfsm record' and run it through the pipeline
a live tcpfsm runs, with the recording's own wall clock: --view trace
prints the transitions as 'tcpfsm trace' would have, --view life the
connection records of 'tcpfsm life', --view ladder its ladder diagrams.
Needs no privileges. All selection flags apply; --cgroup matches the
exact cgroup only; --pod, --namespace, --workload and --container-name
match the names the recording holds.
`

const replayExamples = `  tcpfsm replay /tmp/tcp.rec
  tcpfsm replay -o json --state CLOSE /tmp/tcp.rec
  tcpfsm replay --view life -o json /tmp/tcp.rec
  tcpfsm replay --view ladder /tmp/tcp.rec
`

// replayConfig is what replay runs with.
type replayConfig struct {
	sel      selection
	view     string
	out      outputFormat
	lo       lifeOptions
	noHeader bool
}

func replayCommand(c *replayConfig) settings.Command {
	return settings.Command{Name: "replay", Settings: sliceOf(filters(&c.sel), []settings.Setting{
		&settings.String{Spec: settings.Spec{Flag: "view",
			Help: "`VIEW`: trace (transitions), life (one record per connection) or ladder"},
			Default: "trace",
			Check: func(v string) error {
				if v != "trace" && v != "life" && v != "ladder" {
					return fmt.Errorf("want trace, life or ladder")
				}
				return nil
			},
			To: func(v string) error { c.view = v; return nil }},
		outputSetting(&c.out, "output `FORMAT`: table or json")},
		c.lo.settings(), []settings.Setting{
			countSetting(&c.lo.count, "stop after printing `N` lines or records"),
			noHeaderSetting(&c.noHeader),
		})}
}

func runReplay(args []string, stdout, stderr io.Writer) error {
	var rc replayConfig
	fs, help, err := parseCommand(replayCommand(&rc), args, stdout, replaySynopsis, replayExamples)
	sel, view, out, lo, noHeader := rc.sel, rc.view, rc.out, rc.lo, rc.noHeader
	if err != nil || help {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("want exactly one recording FILE, got %d arguments", fs.NArg())
	}
	if view == "ladder" {
		lo.ladder = true
	}
	if lo.ladder && out == outputJSON {
		return usagef("--view ladder draws text: it excludes -o json")
	}
	if view == "trace" && (lo.ladder || lo.atClose || lo.all) {
		return usagef("--ladder, --at-close and --all apply to --view life")
	}

	name := fs.Arg(0)
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	rd, err := recording.NewReader(f, probe.EventSize)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	h := rd.Header()
	c := clock.Clock{BootNs: h.BootNs}

	var opts session.ReplayOptions
	var flush func() error
	var shown func() int
	var invalid func() error
	if view == "trace" {
		printer := newEventPrinter(stdout, &sel, out, c, lo.count)
		if !noHeader {
			printer.wantHeader()
		}
		opts.OnEventMeta = func(e *probe.Event, m *metadata.Meta) {
			if printer.lastErr == nil {
				// A write error is kept in lastErr, the count by Stop below.
				_ = printer.printMeta(e, m)
			}
		}
		opts.OnMetaEnabled = func() { printer.container = true }
		opts.Stop = func() bool { return lo.count > 0 && printer.shown >= uint64(lo.count) || printer.lastErr != nil }
		flush, shown = printer.flush, func() int { return int(printer.shown) }
		invalid = func() error { return printer.lastErr }
	} else {
		lo.sel, lo.output = sel, out
		printer := newLifePrinter(stdout, &lo, c)
		if !noHeader {
			printer.wantHeader()
		}
		opts.OnMetaEnabled = func() { lo.container = true }
		opts.Handler = printer
		opts.Stop = func() bool { return lo.count > 0 && printer.shown >= lo.count || printer.err != nil }
		flush, shown = printer.flush, func() int { return printer.shown }
		invalid = func() error { return printer.err }
	}
	res, rerr := session.Replay(rd, opts)
	if rerr != nil {
		rerr = fmt.Errorf("%s: %w", name, rerr)
	} else if err := invalid(); err != nil {
		rerr = err
	}
	if err := flush(); err != nil && rerr == nil {
		rerr = err
	}
	fmt.Fprintf(stderr, "\n%d events read, %d shown, %d lost while recording (kernel %s, host %s)\n",
		res.Stats.Events, shown(), res.Lost.Total(), h.KernelRelease, h.Hostname)
	return rerr
}
