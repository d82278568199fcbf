package main

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/prometheus/exporter-toolkit/web"

	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/settings"
	"github.com/tcpfsm/tcpfsm/exporter/connview"
	"github.com/tcpfsm/tcpfsm/exporter/logs"
	"github.com/tcpfsm/tcpfsm/exporter/logsink"
	"github.com/tcpfsm/tcpfsm/exporter/metrics"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

// agentConfig is what the agent runs with: each setting's To writes its
// value here, into the options of the package that uses it.
type agentConfig struct {
	listen    string
	webConfig string
	metrics   metrics.Options
	bpfStats  bool
	logFile   string
	logs      logs.Options
	logQueue  int
	stuck     connview.Thresholds
	sel       selection
	meta      metaConfig
	// session gets the filter and the namespace paths from sel, and the
	// metadata wait, bound and labels from meta.
	session session.Options
}

// The agent's configuration file flag; flags override the file.
const (
	configFlag = "config.file"
	configHelp = "read the configuration from this YAML `FILE` (deploy/tcpfsm.yml shows every key); flags override it"
)

// agentSettings describes every setting of the agent, each once: adding
// one is adding its description here and the code that uses the value.
// deploy/tcpfsm.yml is written from these (TestExampleConfig -update).
func agentSettings(o *agentConfig) []settings.Setting {
	set := []settings.Setting{
		&settings.String{Spec: settings.Spec{Key: "web.listen_address", Flag: "web.listen-address",
			Help: "serve /metrics, the connections API (/api/v1/), /healthz and /readyz on this `ADDRESS` (e.g. --web.listen-address 127.0.0.1:9465)",
			Doc: `host:port to serve /metrics, the connections API (/api/v1/), /healthz and /readyz on. ":9465" listens on every address;
				keep it on 127.0.0.1 when only a local Prometheus scrapes.`},
			Default: ":9465",
			Check: func(v string) error {
				if _, _, err := net.SplitHostPort(v); err != nil {
					return fmt.Errorf("want host:port")
				}
				return nil
			},
			To: func(v string) error { o.listen = v; return nil }},
		&settings.String{Spec: settings.Spec{Key: "web.config_file", Flag: "web.config.file",
			Help: "exporter-toolkit web configuration `FILE` for TLS and basic auth",
			Doc: `exporter-toolkit web configuration file: TLS (tls_server_config) and basic auth
				(basic_auth_users, bcrypt hashes). Empty: plain HTTP, no auth. Checked at start; a missing
				or invalid file is a configuration error. With basic auth on, the API, /healthz and /readyz
				ask for credentials too. Example: /etc/tcpfsm/web.yml`},
			Check: func(v string) error {
				if v == "" {
					return nil
				}
				return web.Validate(v)
			},
			To: func(v string) error { o.webConfig = v; return nil }},

		&settings.Strings{Spec: settings.Spec{Key: "metrics.labels", Flag: "metrics.labels",
			Help: "optional `LABELS` on connection metrics: port, comm, container, namespace, pod, workload (e.g. --metrics.labels namespace,workload)",
			Doc: `Optional labels on tcpfsm_connections_opened_total, tcpfsm_connections_closed_total and the
				handshake and connection duration histograms: any of port (the listening port of accepted
				connections), comm (the owner's command name), container (the owner's container: its name
				when the runtime names it, else runtime:id), namespace, pod and workload (kind/name, such as
				deployment/web) of the owner's Kubernetes pod. pod churns: most pods end up "other"; namespace
				and workload are the ones to turn on. Never pids, addresses or ephemeral ports. Example:
				[namespace, workload]`},
			Check: func(v string) error {
				if _, ok := metrics.ParseLabel(v); !ok {
					return fmt.Errorf("want port, comm, container, namespace, pod or workload (never pid, addresses or ephemeral ports)")
				}
				return nil
			},
			To: func(v []string) error {
				o.metrics.Labels = nil
				for _, s := range v {
					l, _ := metrics.ParseLabel(s)
					for _, seen := range o.metrics.Labels {
						if seen == l {
							return fmt.Errorf("label %q given twice", s)
						}
					}
					o.metrics.Labels = append(o.metrics.Labels, l)
				}
				return nil
			}},
		&settings.Int{Spec: settings.Spec{Key: "metrics.label_limit", Flag: "metrics.label-limit",
			Help: "distinct values each optional label keeps (`N`); the rest count as \"other\"",
			Doc:  `Distinct values each optional label keeps; later values are counted under "other".`},
			Default: metrics.DefaultLabelLimit, Min: 1, Max: metrics.MaxLabelLimit,
			To: func(v int64) error { o.metrics.LabelLimit = int(v); return nil }},
		&settings.Bool{Spec: settings.Spec{Key: "metrics.no_exemplars", Flag: "metrics.no-exemplars",
			Help: "no connection-id exemplars on the duration histograms",
			Doc: `Leave out the {conn_id} exemplars on the duration histograms (at most one per histogram
				per second; they link a dashboard to a log record).`},
			To: func(v bool) error { o.metrics.NoExemplars = v; return nil }},
		&settings.Bool{Spec: settings.Spec{Key: "metrics.bpf_stats", Flag: "metrics.bpf-stats",
			Help: "turn on the kernel's BPF run-time statistics while the agent runs (needs CAP_SYS_ADMIN)",
			Doc: `Turn on the kernel's BPF run-time statistics while the agent runs, for
				tcpfsm_bpf_program_run_seconds_total and tcpfsm_bpf_program_runs_total (both stay 0
				otherwise). Costs two clock reads per program run, and needs CAP_SYS_ADMIN: without it
				the agent logs a warning and carries on.`},
			To: func(v bool) error { o.bpfStats = v; return nil }},

		&settings.String{Spec: settings.Spec{Key: "logs.file", Flag: "log.file",
			Help: "write connection records to `FILE` (- for stdout)",
			Doc: `Where the JSON connection records go, one line each: a path (opened for append, created
				0640), or - for stdout. A path that cannot be written at start (a directory, a read-only
				file system, a /proc file) is a configuration error. Later write errors (a full disk) drop
				the records that could not be written, whole: they are counted
				(tcpfsm_log_records_dropped_total), reported on stderr at most once a minute, and logging
				resumes by itself when the file takes writes again. SIGHUP reopens the path (log rotation).`},
			Default: "-",
			Check: func(v string) error {
				if v == "" {
					return fmt.Errorf("want a path, or - for stdout")
				}
				return nil
			},
			To: func(v string) error { o.logFile = v; return nil }},
		&settings.Bool{Spec: settings.Spec{Key: "logs.transitions", Flag: "log.transitions",
			Help: "also log every state transition",
			Doc: `Log every state transition as well (one line each, the schema of tcpfsm trace -o json):
				verbose, for debugging.`},
			To: func(v bool) error { o.logs.Transitions = v; return nil }},
		&settings.Float{Spec: settings.Spec{Key: "logs.sample", Flag: "log.sample",
			Help: "log this `FRACTION` of connection records, chosen by connection id (e.g. --log.sample 0.01)",
			Doc:  `Fraction of connection records logged, chosen by connection id. Metrics always count every connection.`},
			Default: 1, Min: 0, MinOpen: true, Max: 1,
			To: func(v float64) error { o.logs.Sample = v; return nil }},
		&settings.Int{Spec: settings.Spec{Key: "logs.queue_bytes", Flag: "log.queue-bytes",
			Help: "`BYTES` of records that may wait for a slow log file; more are dropped and counted",
			Doc: `Records waiting for the log file, in bytes (a record is about 700): the agent never waits
				for the file, so when it is slower than the records (a stalled pipe or NFS mount) the records
				beyond this are dropped and counted (tcpfsm_log_records_dropped_total{reason="queue_full"}).
				Twice this is allocated at start.`},
			Default: logsink.DefaultQueueBytes, Min: logsink.MinQueueBytes, Max: logsink.MaxQueueBytes,
			To: func(v int64) error { o.logQueue = int(v); return nil }},
	}
	set = append(set, stuckSettings(&o.stuck)...)
	set = append(set, kernelFilters(&o.sel)...)
	set = append(set, metaFilters(&o.sel)...)
	set = append(set, metaSettings(&o.meta, true)...)
	return append(set,
		attachSetting(&o.session.Probe.Attach),
		maxTrackedSetting(&o.session.Lifecycle),
		&settings.Int{Spec: settings.Spec{Key: "tracer.kernel_table", Flag: "kernel-table",
			Help: "`N` open sockets the kernel side remembers owners for, preallocated at about 128 bytes each",
			Doc: `Open sockets the kernel side remembers (owner, id, state entry time) in its LRU table:
				preallocated, about 128 bytes each. A socket it had to forget comes back as a partial record.`},
			Default: probe.DefaultMaxConnections, Min: probe.MinMaxConnections, Max: probe.MaxMaxConnections,
			To: func(v int64) error { o.session.Probe.MaxConnections = int(v); return nil }},
		&settings.Int{Spec: settings.Spec{Key: "tracer.ring_buffer_bytes", Flag: "ring-buffer-bytes",
			Help: "ring buffer size in `BYTES`",
			Doc: `Ring buffer between the kernel and the agent, in bytes. 8 MiB holds about
				58000 events (144 bytes each with the ring buffer's header); raise it if
				tcpfsm_events_lost_total{reason="ring_buffer_full"} grows.`},
			Default: probe.DefaultRingBufferSize, Min: int64(probe.MinRingBufferSize), Max: probe.MaxRingBufferSize,
			Bounds: fmt.Sprintf("a power of two, a page (4096 bytes on most machines) to %d", probe.MaxRingBufferSize),
			Check:  func(v int64) error { return probe.CheckRingBufferSize(int(v)) },
			To:     func(v int64) error { o.session.Probe.RingBufferSize = int(v); return nil }},
		&settings.Duration{Spec: settings.Spec{Key: "tracer.time_wait_poll", Flag: "time-wait-poll",
			Help: "every `DURATION`, sock_diag looks for ended TIME_WAITs and orphans leaving FIN_WAIT2",
			Doc: `How often sock_diag dumps the time-wait sockets of the namespaces that have some: to see
				the end of TIME_WAITs on kernels without BPF trampolines (and with them, any end their hooks
				do not tell: one two dumps in a row miss has ended), and, on every kernel, when an
				orphan (closed by its owner before the peer's FIN) leaves FIN_WAIT2, into TIME_WAIT at the
				peer's FIN or dead after tcp_fin_timeout. Watching a network namespace needs CAP_SYS_ADMIN
				(see deploy/README.md); out of reach, a TIME_WAIT is assumed to last 60 s and an orphan
				tcp_fin_timeout (60 s unless read), unless its peer's end is traced.`},
			Default: session.DefaultTimeWaitPoll, Min: session.MinTimeWaitPoll, Max: session.MaxTimeWaitPoll, Zero: "off",
			To: func(v time.Duration) error {
				if v == 0 {
					v = -1 // off, for the session
				}
				o.session.TimeWaitPoll = v
				return nil
			}},
		&settings.Duration{Spec: settings.Spec{Key: "reconcile.interval", Flag: "reconcile.interval",
			Help: "every `DURATION`, compare the records with every socket sock_diag lists and repair them",
			Doc: `How often the agent dumps every TCP socket of every network namespace it can enter and
				repairs its records from them: a socket no record holds is seeded, a record whose socket is
				gone ends with close kind "unobserved", a wrong state is corrected (counted in
				tcpfsm_reconciled_total{action}). One also runs a second after events were lost. A
				namespace that cannot be dumped is never repaired. Off with an owner filter (--pid, --cgroup).`},
			Default: session.DefaultReconcile, Min: session.MinReconcile, Max: session.MaxReconcile, Zero: "off",
			To: func(v time.Duration) error { o.session.Reconcile = v; return nil }},
	)
}

// agentCommand is the agent's command line: its settings bound to o.
func agentCommand(o *agentConfig) settings.Command {
	return settings.Command{Name: "agent", Settings: agentSettings(o), ConfigFlag: configFlag, ConfigHelp: configHelp}
}

// parseAgentConfig reads the flags and the file named by --config.file,
// the flags overriding it, into the options the agent runs with.
func parseAgentConfig(args []string, usage io.Writer) (agentConfig, bool, error) {
	var o agentConfig
	fs, help, err := parseCommand(agentCommand(&o), args, usage, agentSynopsis, agentExamples)
	if err != nil || help {
		return agentConfig{}, help, err
	}
	if err := noArguments(fs); err != nil {
		return agentConfig{}, false, err
	}
	o.session.Probe.Filter = o.sel.kernel
	o.session.NetNSPaths = o.sel.netnsPaths()
	o.meta.sessionOptions(&o.session)
	// Every value was checked against its description; the packages'
	// own checks must agree (a test holds this), so this never fires.
	if err := o.session.Validate(); err != nil {
		return agentConfig{}, false, usagef("invalid settings: %v", err)
	}
	return o, false, nil
}

// agentName is how messages name the agent setting of a key.
func agentName(key string) string {
	var o agentConfig
	for _, s := range agentSettings(&o) {
		if settings.SpecOf(s).Key == key {
			return settings.Name(s, true)
		}
	}
	return key
}

// The example configuration's opening comment and its sections'.
const exampleConfigHeader = `tcpfsm agent configuration: every key, with its default.

  tcpfsm agent --config.file /etc/tcpfsm/tcpfsm.yml

Flags override the file (each key's flag is named next to it). Unknown
keys are errors, so a typo never silently keeps a default; a bad value
makes the agent exit with status 2 and a one-line message naming the key
and its line. A key left out, or null, takes its default. Durations are Go
durations: 500ms, 1s, 2m.

Written from the settings' descriptions (cmd/tcpfsm/agentconfig.go):
go test ./cmd/tcpfsm -run TestExampleConfig -update`

var exampleConfigSections = []settings.Section{
	{Key: "stuck", Doc: stuckSectionDoc},
	{Key: "filter", Doc: `Everything here but namespace, workload and container_name is applied in the
		kernel, before the ring buffer (pod through the pod's cgroup, found at start); those three select
		records and events in user space, by the container runtime's names: events of containers not
		named yet, and records that are still not named after metadata.wait, do not pass them. A filter
		given must select something (pid: 0 is an error); leave it out, null or empty to select
		everything.`},
	{Key: "metadata", Doc: `Names of the containers that own connections, from the container runtime
		(no Kubernetes API token needed): the k8s object of the log records, the container, namespace,
		pod and workload labels, the filters above. With no socket found, records carry container ids
		only.`},
}

// writeExampleConfig writes deploy/tcpfsm.yml's text.
func writeExampleConfig(w io.Writer) error {
	var o agentConfig
	return settings.WriteYAML(w, exampleConfigHeader, exampleConfigSections, agentSettings(&o))
}
