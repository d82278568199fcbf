package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

type descs struct {
	transitions, opened, closed, failures, connections    *prometheus.Desc
	bytesSent, bytesRecv, resets, synRetrans              *prometheus.Desc
	events, lost, tracked, evictions, misses, anomalies   *prometheus.Desc
	buildInfo, progRuns, progSeconds, twins, seededStarts *prometheus.Desc
	ephemeralPorts, seeded, reconciliations, reconciled   *prometheus.Desc
	progMisses, nestedRuns                                *prometheus.Desc
	// the container runtime's metadata (metadata.go)
	metaUp, metaErrors, metaLookups, metaEntries, metaEvictions *prometheus.Desc
	metaExpirations, metaWaits, metaRecordWaits                 *prometheus.Desc
}

func newDescs(opt []string) descs {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return descs{
		transitions: d("tcpfsm_state_transitions_total", "TCP state transitions seen, by old and new state.", "from", "to"),
		opened: d("tcpfsm_connections_opened_total", "Connections started: connect() (active) or a SYN accepted by a listener (passive).",
			append([]string{"role"}, opt...)...),
		closed: d("tcpfsm_connections_closed_total", "Connections closed, by who started the close and how it ended.",
			append([]string{"role", "initiator", "kind"}, opt...)...),
		failures: d("tcpfsm_connect_failures_total", "connect() calls that never reached ESTABLISHED, by reason.",
			append([]string{"reason"}, opt...)...),
		connections: d("tcpfsm_connections", "Tracked connections in each TCP state now, as ss counts them: time-wait sockets by their substate, so an orphan waiting for its peer's FIN is fin_wait2; time_wait counts reconstructed ones too.",
			"state"),
		bytesSent: d("tcpfsm_bytes_sent_total", "Payload bytes the peers acknowledged, counted when connections close."),
		bytesRecv: d("tcpfsm_bytes_received_total", "Payload bytes received in order, counted when connections close."),
		resets:    d("tcpfsm_resets_total", "RSTs sent and received on tracked connections.", "direction"),
		synRetrans: d("tcpfsm_syn_retransmits_total",
			"SYN retransmits of connections still in SYN_SENT."),
		events: d("tcpfsm_events_total", "Events read from the kernel."),
		lost: d("tcpfsm_events_lost_total",
			"Events the kernel could not deliver: the ring buffer was full, or the program was already running on that CPU.", "reason"),
		tracked: d("tcpfsm_tracked_connections",
			"Connections tracked now: records held in memory (TIME_WAIT included, listeners and those older than the agent too) and time-wait sockets seen at start."),
		evictions: d("tcpfsm_evictions_total", "Records dropped to bound memory, by reason.", "reason"),
		misses:    d("tcpfsm_attribution_misses_total", "Closed connections whose owning process was never seen."),
		anomalies: d("tcpfsm_anomalies_total",
			"Records flagged: a transition RFC 9293 does not allow, a start not seen, missed events, events lost.", "kind"),
		buildInfo: d("tcpfsm_build_info", "tcpfsm's version; always 1.", "version", "revision", "goversion"),
		progRuns: d("tcpfsm_bpf_program_runs_total",
			"Runs of each BPF program, as the kernel counts them: only while kernel.bpf_stats_enabled is 1.", "program"),
		progSeconds: d("tcpfsm_bpf_program_run_seconds_total", "Time spent in each BPF program; counted only while kernel.bpf_stats_enabled is 1.", "program"),
		progMisses: d("tcpfsm_bpf_program_recursion_misses_total",
			"Runs of each BPF program the kernel skipped because it was already running on that CPU. The state program's are "+
				"handled by its nested instance (tcpfsm_bpf_nested_runs_total); the rest are tcpfsm_events_lost_total{reason=\"program_busy\"}.",
			"program"),
		nestedRuns: d("tcpfsm_bpf_nested_runs_total",
			"Transitions the state program's nested instance handled because the main program was already running on that CPU: not lost."),
		twins: d("tcpfsm_twin_sockets_total",
			"Accepted sockets the kernel created and destroyed at once, having lost a race to a twin for the same connection."),
		seededStarts: d("tcpfsm_snapshot_matches_total", "Seeded records (connections older than the agent) that an event joined."),
		seeded: d("tcpfsm_seeded_connections_total",
			"Connection records opened from a sock_diag dump (the snapshot at start, a reconciliation) rather than by an event."),
		reconciliations: d("tcpfsm_reconciliations_total",
			"Complete sock_diag dumps of a network namespace the records were reconciled with (reconcile.interval, and after lost events)."),
		reconciled: d("tcpfsm_reconciled_total",
			"Records a reconciliation repaired, by action: seeded (a socket no record held), ended (a socket gone unseen: close kind unobserved), "+
				"corrected (another state than the kernel's).", "action"),
		ephemeralPorts: d("tcpfsm_ephemeral_ports",
			"Local ports connect() picks from in the agent's network namespace: net.ipv4.ip_local_port_range less ip_local_reserved_ports."),
		metaUp: d("tcpfsm_metadata_source_up",
			"1 while the container runtime's last list succeeded, by runtime.", "runtime"),
		metaErrors: d("tcpfsm_metadata_errors_total",
			"Failed lists of the container runtimes, by reason; records keep container ids meanwhile.", "reason"),
		metaLookups: d("tcpfsm_metadata_lookups_total", "Container metadata looked up, by whether it was known.", "result"),
		metaEntries: d("tcpfsm_metadata_cache_entries", "Containers (and ids the runtime did not know) in the metadata cache."),
		metaEvictions: d("tcpfsm_metadata_cache_evictions_total",
			"Containers dropped from the metadata cache because it was full (metadata.cache_size)."),
		metaExpirations: d("tcpfsm_metadata_cache_expirations_total",
			"Containers dropped from the metadata cache metadata.ttl after their runtime stopped listing them."),
		metaWaits: d("tcpfsm_metadata_waits_total",
			"Waits for a container's metadata, by outcome: resolved, timeout, unknown (the runtime does not know it), dropped (too many waits).",
			"result"),
		metaRecordWaits: d("tcpfsm_metadata_record_waits_total",
			"Connection records held back for their container's metadata or their node-local peer's record, by outcome: "+
				"resolved, timeout (logged with what was known), dropped (too many held).", "result"),
	}
}

// Describe sends every descriptor.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	d := &m.descs
	for _, x := range []*prometheus.Desc{d.transitions, d.opened, d.closed, d.failures, d.connections, d.bytesSent,
		d.bytesRecv, d.resets, d.synRetrans, d.events, d.lost, d.tracked, d.evictions, d.misses, d.anomalies,
		d.buildInfo, d.progRuns, d.progSeconds, d.progMisses, d.nestedRuns, d.twins, d.seededStarts, d.ephemeralPorts,
		d.seeded, d.reconciliations, d.reconciled,
		d.metaUp, d.metaErrors, d.metaLookups, d.metaEntries, d.metaEvictions, d.metaExpirations, d.metaWaits, d.metaRecordWaits} {
		ch <- x
	}
	m.handshake.Describe(ch)
	m.lifetime.Describe(ch)
	m.stateDur.Describe(ch)
}

// Collect sends the current values.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	d := &m.descs
	counter := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, labels...)
	}
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}

	for from := probe.StateEstablished; from <= probe.MaxState; from++ {
		for to := probe.StateEstablished; to <= probe.MaxState; to++ {
			if n := m.transitions[from][to].Load(); n > 0 {
				counter(d.transitions, float64(n), stateLabel[from], stateLabel[to])
			}
		}
	}
	counter(d.resets, float64(m.resets[resetSent].Load()), "sent")
	counter(d.resets, float64(m.resets[resetReceived].Load()), "received")
	counter(d.synRetrans, float64(m.synRetrans.Load()))
	counter(d.events, float64(m.events.Load()))

	n := len(m.opts.Labels)
	m.mu.Lock()
	for k, v := range m.opened {
		counter(d.opened, float64(*v), append([]string{k.role}, k.opt[:n]...)...)
	}
	for k, v := range m.closed {
		counter(d.closed, float64(*v), append([]string{k.role, k.initiator, k.kind}, k.opt[:n]...)...)
	}
	for k, v := range m.failures {
		counter(d.failures, float64(*v), append([]string{failureNames[k.reason]}, k.opt[:n]...)...)
	}
	counter(d.bytesSent, float64(m.bytesSent))
	counter(d.bytesRecv, float64(m.bytesRecv))
	counter(d.misses, float64(m.attributionMisses))
	m.mu.Unlock()

	s := m.snapshot()
	for st := probe.StateEstablished; st <= probe.MaxState; st++ {
		if st == probe.StateNewSynRecv || st == probe.StateBoundInactive || st == probe.StateClose {
			continue // never a tracked connection's state
		}
		gauge(d.connections, float64(s.States[st]), stateLabel[st])
	}
	gauge(d.tracked, float64(s.Tracked))
	counter(d.lost, float64(s.Lost.RingFull), "ring_buffer_full")
	counter(d.lost, float64(s.Lost.Recursion), "program_busy")
	for i := 0; i < lifecycle.EvictReasons; i++ {
		counter(d.evictions, float64(s.Builder.Evictions[i]), lifecycle.EvictReasonName(i))
	}
	for i, v := range s.Builder.Anomalies {
		counter(d.anomalies, float64(v), lifecycle.AnomalyName(1<<i))
	}
	counter(d.twins, float64(s.Builder.TwinChildren))
	counter(d.seededStarts, float64(s.Builder.SeededStart))
	counter(d.seeded, float64(s.Builder.Seeded))
	counter(d.reconciliations, float64(s.Builder.Reconciliations))
	for i := 0; i < lifecycle.ReconcileActions; i++ {
		counter(d.reconciled, float64(s.Builder.Reconciled[i]), lifecycle.ReconcileActionName(i))
	}
	var nested uint64
	for _, p := range s.Programs {
		counter(d.progRuns, float64(p.RunCount), p.Name)
		counter(d.progSeconds, p.RunTime.Seconds(), p.Name)
		counter(d.progMisses, float64(p.RecursionMisses), p.Name)
		nested += p.NestedRuns
	}
	counter(d.nestedRuns, float64(nested))
	gauge(d.buildInfo, 1, m.build.Version, m.build.Revision, m.build.GoVersion)
	if s.EphemeralPorts > 0 {
		gauge(d.ephemeralPorts, float64(s.EphemeralPorts))
	}
	if md := s.Metadata; md != nil {
		up := map[string]float64{}
		for _, src := range md.Sources {
			if src.Up {
				up[src.Runtime] = 1
			} else if _, ok := up[src.Runtime]; !ok {
				up[src.Runtime] = 0
			}
		}
		for rt, v := range up {
			gauge(d.metaUp, v, rt)
		}
		for r, n := range md.ErrorsTotal() {
			counter(d.metaErrors, float64(n), metadata.Reason(r).String())
		}
		counter(d.metaLookups, float64(md.Hits), "hit")
		counter(d.metaLookups, float64(md.Misses), "miss")
		gauge(d.metaEntries, float64(md.Entries))
		counter(d.metaEvictions, float64(md.Evictions))
		counter(d.metaExpirations, float64(md.Expirations))
		counter(d.metaWaits, float64(md.WaitsResolved), "resolved")
		counter(d.metaWaits, float64(md.WaitsTimedOut), "timeout")
		counter(d.metaWaits, float64(md.WaitsUnknown), "unknown")
		counter(d.metaWaits, float64(md.WaitsDropped), "dropped")
		w := &s.RecordWaits
		counter(d.metaRecordWaits, float64(w.Resolved), "resolved")
		counter(d.metaRecordWaits, float64(w.TimedOut), "timeout")
		counter(d.metaRecordWaits, float64(w.Dropped), "dropped")
	}

	m.handshake.Collect(ch)
	m.lifetime.Collect(ch)
	m.stateDur.Collect(ch)
}
