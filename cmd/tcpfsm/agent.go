package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"golang.org/x/sys/unix"

	"github.com/tcpfsm/tcpfsm/exporter/api"
	"github.com/tcpfsm/tcpfsm/exporter/logs"
	"github.com/tcpfsm/tcpfsm/exporter/metrics"
	"github.com/tcpfsm/tcpfsm/internal/buildinfo"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

const agentSynopsis = `Usage: tcpfsm agent [FLAGS]

Run tcpfsm as a host agent: trace every TCP connection, serve Prometheus
metrics on /metrics, what is open now on /api/v1/connections (JSON; the
source of 'tcpfsm top --agent'), /healthz and /readyz, and log one JSON
record per finished connection, the schema of 'tcpfsm life -o json'. Configuration
comes from flags and an optional YAML file (--config.file); a bad value
exits with status 2 and names the key, its flag and its line. SIGTERM or
SIGINT: stop reading, log every record still held, detach, exit 0. SIGHUP:
reopen the log file (after logrotate renamed it). The agent never waits for
its log: records a slow or failing log file cannot take are dropped and
counted (tcpfsm_log_records_dropped_total), and it carries on.

Needs CAP_BPF and CAP_PERFMON. CAP_SYS_ADMIN lets it enter network
namespaces for sock_diag (its own included): the snapshot of connections
older than itself, the end of TIME_WAITs where the kernel has no BPF
trampolines, and when orphans leave FIN_WAIT2; it also turns on BPF run-time statistics. CAP_SYS_PTRACE (and,
not as root, CAP_DAC_READ_SEARCH) lets it name the owners of connections
older than itself. Without them it warns and works around it
(deploy/README.md).
`

const agentExamples = `  tcpfsm agent
  tcpfsm agent --web.listen-address 127.0.0.1:9465 --log.file /var/log/tcpfsm.jsonl
  tcpfsm agent --config.file /etc/tcpfsm/agent.yml --metrics.labels port,container
`

func runAgent(args []string, stdout, stderr io.Writer) error {
	cfg, help, err := parseAgentConfig(args, stdout)
	if err != nil || help {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))

	sink, err := openLog(&cfg, stdout, log)
	if err != nil {
		return err
	}
	// Closed last: every record the builder still holds is logged first.
	closeLog := sync.OnceValue(func() error { return sink.Close(logCloseTimeout) })
	defer func() { _ = closeLog() }() // an early return's; the normal path checks it below

	if cfg.bpfStats {
		// Program run time is only counted while someone holds this.
		st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			log.Warn("BPF run-time statistics unavailable (needs CAP_SYS_ADMIN)", "err", err)
		} else {
			defer st.Close()
		}
	}

	names, err := cfg.meta.open(log)
	if err != nil {
		return err
	}
	if names != nil {
		defer names.Close()
	}
	if err := resolvePod(&cfg.sel, names); err != nil {
		return err
	}

	var sess *session.Session
	var m *metrics.Metrics
	var lw *logs.Writer
	var h lifecycle.Handlers
	opts := cfg.session
	opts.Probe.Filter = cfg.sel.kernel
	var handler lifecycle.Handler = &h
	if f := &cfg.sel.meta; f.userSpace() {
		handler = &metaFiltered{h: &h, f: f}
	}
	opts.Handler = handler
	opts.OnEvent = func(e *probe.Event) { m.Event(e); lw.Event(e) }
	if names != nil {
		opts.Metadata = names
		if eventsNeedMeta(&cfg) {
			f := &cfg.sel.meta
			opts.OnEvent = nil
			opts.OnEventMeta = func(e *probe.Event, md *metadata.Meta) {
				if f.match(named(md)) {
					m.EventMeta(e, md)
					lw.EventMeta(e, md)
				}
			}
		}
	}
	opts.OnDrained = func() error { return lw.Flush() }
	sess, err = session.Open(opts)
	if err != nil {
		return err
	}
	defer sess.Close()
	lw = logs.New(sink, sess.Clock(), cfg.logs)
	mopts := cfg.metrics
	mopts.ContainerOf = sess.Container
	if names != nil {
		mopts.Names = names.Lookup
	}
	m = metrics.New(mopts, buildinfo.Get(), func() metrics.Snapshot { return snapshot(sess, names) })
	h = lifecycle.Handlers{m, lw}

	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewStuck(m, cfg.stuck, sess.With, clock.Monotonic))
	reg.MustRegister(metrics.NewLogSink(sink.Stats))
	reg.MustRegister(m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	f := sess.Probe().Features()
	log.Info("tracing", "hook", string(sess.Probe().Attached()), "time_wait_exact", f.TimeWait, "resets", f.Resets,
		"syn_retransmits", f.SynRetransmits, "accept_owner", f.AcceptOwner)
	if n, took := sess.Snapshot(); !cfg.session.NoSnapshot {
		log.Info("seeded existing connections", "sockets", n, "took", took.Round(time.Millisecond).String())
	}
	for _, w := range sess.Warnings() {
		log.Warn(w)
	}
	warnCapabilities(log, f.TimeWait)
	if names != nil {
		log.Info("naming containers", "sources", describeSources(names))
	} else {
		log.Info("no container runtime socket found: records carry container ids (metadata.cri_endpoint, metadata.engine_endpoints)")
	}

	// Serve.
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry: reg, EnableOpenMetrics: true, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError)}))
	api.New(sess, api.Options{Thresholds: cfg.stuck, Totals: m.Totals}).Register(mux)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n") // a client gone away: nothing to tell it
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		// Ready: attached, and the reader empties the ring buffer at least
		// once per flush interval.
		if age := time.Since(sess.LastDrained()); age > 5*time.Second {
			http.Error(w, fmt.Sprintf("reader behind: ring buffer last empty %s ago", age.Round(time.Millisecond)), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n") // a client gone away: nothing to tell it
	})
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("--web.listen-address: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	systemd := false
	webCfg := cfg.webConfig
	served := make(chan error, 1)
	go func() {
		served <- web.Serve(ln, srv, &web.FlagConfig{WebListenAddresses: &[]string{cfg.listen},
			WebSystemdSocket: &systemd, WebConfigFile: &webCfg}, log)
	}()

	// Stop on SIGTERM/SIGINT: detach, drain, flush the builder (every
	// record still held is logged), then shut the server down. SIGHUP
	// reopens the log file (rotation). A broken pipe is a write error
	// of the log, counted, not the end of the agent.
	signal.Ignore(syscall.SIGPIPE)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)
	runErr := make(chan error, 1)
	go func() { runErr <- sess.Run() }()
	var rerr error
wait:
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGHUP {
				sink.Reopen()
				continue
			}
			log.Info("stopping", "signal", s.String())
			// Stop's error is a link that would not detach or the last
			// flush; Run returns what the reader saw, and the deferred
			// Close frees the links either way.
			_ = sess.Stop()
			rerr = <-runErr
		case rerr = <-runErr:
		case err := <-served:
			// The web server's error first; the reader's too when it
			// had one (nil, the usual end after Stop, adds nothing).
			_ = sess.Stop()
			return errors.Join(fmt.Errorf("web server: %w", err), <-runErr)
		}
		break wait
	}
	if err := lw.Flush(); err != nil && rerr == nil {
		rerr = fmt.Errorf("log: %w", err)
	}
	if err := closeLog(); err != nil {
		log.Warn("log file", "file", cfg.logFile, "err", err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The records are logged by now; a client that holds the server past
	// the timeout only loses its answer.
	_ = srv.Shutdown(ctx)
	if errors.Is(rerr, http.ErrServerClosed) {
		rerr = nil
	}
	lc, _ := sess.Probe().Lost()
	st := sink.Stats()
	log.Info("stopped", "records_logged", st.Written, "records_dropped", st.DroppedQueueFull+st.DroppedWriteError, "events_lost", lc.Total())
	return rerr
}

// warnCapabilities says what the agent does without the capabilities
// beyond CAP_BPF and CAP_PERFMON.
func warnCapabilities(log *slog.Logger, exactTimeWait bool) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return
	}
	has := func(c int) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	if !has(unix.CAP_SYS_ADMIN) {
		msg := "without CAP_SYS_ADMIN sock_diag cannot enter network namespaces: connections older than the agent are partial records"
		if !exactTimeWait {
			msg += ", and TIME_WAITs are assumed to last 60 s"
		}
		log.Warn(msg)
	}
	if !has(unix.CAP_SYS_PTRACE) {
		log.Warn("without CAP_SYS_PTRACE the owners of connections older than the agent are named only for processes whose /proc it may read")
	}
}

// eventsNeedMeta: the per-event path looks up the owner's container
// only when something uses it: a metadata label, a metadata filter, or
// transitions in the log.
func eventsNeedMeta(cfg *agentConfig) bool {
	for _, l := range cfg.metrics.Labels {
		if l.NeedsMetadata() {
			return true
		}
	}
	return cfg.sel.meta.userSpace() || cfg.logs.Transitions
}

// metaFiltered hands on the records whose metadata passes the filter.
type metaFiltered struct {
	h lifecycle.Handler
	f *metaFilter
}

func (m *metaFiltered) Closed(r *lifecycle.Record) {
	if m.f.match(r.Meta) {
		m.h.Closed(r)
	}
}

func (m *metaFiltered) Finished(r *lifecycle.Record) {
	if m.f.match(r.Meta) {
		m.h.Finished(r)
	}
}

// snapshot reads what the metrics show about the tracer itself.
func snapshot(s *session.Session, names *metadata.Resolver) metrics.Snapshot {
	var snap metrics.Snapshot
	s.With(func(b *lifecycle.Builder) {
		for st := probe.StateEstablished; st <= probe.MaxState; st++ {
			snap.States[st] = b.StateCount(st)
		}
		snap.Tracked = b.Tracked()
		snap.Builder = b.Stats()
	})
	snap.Lost, _ = s.Probe().Lost()
	snap.Programs, _ = s.Probe().Stats()
	snap.EphemeralPorts, _ = metrics.EphemeralPorts("/proc/sys")
	if names != nil {
		st := names.Stats()
		snap.Metadata = &st
		w := s.MetaStats()
		snap.RecordWaits = metrics.RecordWaits{Resolved: w.Resolved, TimedOut: w.TimedOut, Dropped: w.Dropped}
	}
	return snap
}
