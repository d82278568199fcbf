package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

func podMeta(ns, pod, ctr, kind, workload string) *metadata.Meta {
	return &metadata.Meta{Runtime: "containerd", ID: ns + pod + ctr, Name: ctr,
		Pod: metadata.Pod{Namespace: ns, Name: pod, Workload: metadata.Workload{Kind: kind, Name: workload}}}
}

// The metadata labels: the container by name (runtime:id while not
// named), namespace, pod, workload as kind/name; each within its budget,
// the rest "other"; an owner in no container has them empty.
func TestMetadataLabels(t *testing.T) {
	m := New(Options{Labels: []Label{LabelNamespace, LabelWorkload, LabelContainer, LabelPod}, LabelLimit: 2}, build, fixedSnapshot)
	closed := func(md *metadata.Meta, container string) {
		r := lifecycle.Record{Role: lifecycle.RoleActive, Owner: probe.OwnerTask, Kind: lifecycle.KindGraceful,
			Initiator: lifecycle.InitiatorLocal, Meta: md, Container: container, Start: 1, End: 2}
		m.Closed(&r)
	}
	closed(podMeta("shop", "web-1", "nginx", "Deployment", "web"), "containerd:1")
	closed(podMeta("data", "db-0", "postgres", "StatefulSet", "db"), "containerd:2")
	closed(podMeta("ops", "agent-x", "agent", "DaemonSet", "agent"), "containerd:3")
	closed(podMeta("shop", "web-1", "nginx", "Deployment", "web"), "containerd:1")
	closed(nil, "containerd:0123456789ab")
	closed(nil, "")
	refused := lifecycle.Record{Role: lifecycle.RoleActive, Owner: probe.OwnerTask, Kind: lifecycle.KindRefused,
		Initiator: lifecycle.InitiatorRemote, Meta: podMeta("data", "db-0", "postgres", "StatefulSet", "db"), Start: 1, End: 2}
	m.Closed(&refused)

	e := probe.Event{Type: uint8(probe.TypeState), Oldstate: uint8(probe.StateClose), Newstate: uint8(probe.StateSynSent),
		Owner: uint8(probe.OwnerTask), CgroupId: 5}
	m.EventMeta(&e, podMeta("shop", "web-1", "nginx", "Deployment", "web"))
	m.EventMeta(&e, &metadata.Meta{Runtime: "podman", ID: "abc"}) // not named yet
	m.EventMeta(&e, nil)                                          // a host process

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	want := `
# HELP tcpfsm_connections_closed_total Connections closed, by who started the close and how it ended.
# TYPE tcpfsm_connections_closed_total counter
tcpfsm_connections_closed_total{container="nginx",initiator="local",kind="graceful",namespace="shop",pod="web-1",role="active",workload="deployment/web"} 2
tcpfsm_connections_closed_total{container="postgres",initiator="local",kind="graceful",namespace="data",pod="db-0",role="active",workload="statefulset/db"} 1
tcpfsm_connections_closed_total{container="other",initiator="local",kind="graceful",namespace="other",pod="other",role="active",workload="other"} 1
tcpfsm_connections_closed_total{container="other",initiator="local",kind="graceful",namespace="",pod="",role="active",workload=""} 1
tcpfsm_connections_closed_total{container="",initiator="local",kind="graceful",namespace="",pod="",role="active",workload=""} 1
tcpfsm_connections_closed_total{container="postgres",initiator="remote",kind="refused",namespace="data",pod="db-0",role="active",workload="statefulset/db"} 1
# HELP tcpfsm_connect_failures_total connect() calls that never reached ESTABLISHED, by reason.
# TYPE tcpfsm_connect_failures_total counter
tcpfsm_connect_failures_total{container="",namespace="",pod="",reason="other",workload=""} 0
tcpfsm_connect_failures_total{container="",namespace="",pod="",reason="refused",workload=""} 0
tcpfsm_connect_failures_total{container="",namespace="",pod="",reason="reset",workload=""} 0
tcpfsm_connect_failures_total{container="",namespace="",pod="",reason="timeout",workload=""} 0
tcpfsm_connect_failures_total{container="postgres",namespace="data",pod="db-0",reason="refused",workload="statefulset/db"} 1
# HELP tcpfsm_connections_opened_total Connections started: connect() (active) or a SYN accepted by a listener (passive).
# TYPE tcpfsm_connections_opened_total counter
tcpfsm_connections_opened_total{container="nginx",namespace="shop",pod="web-1",role="active",workload="deployment/web"} 1
tcpfsm_connections_opened_total{container="other",namespace="",pod="",role="active",workload=""} 1
tcpfsm_connections_opened_total{container="",namespace="",pod="",role="active",workload=""} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"tcpfsm_connections_closed_total", "tcpfsm_connections_opened_total", "tcpfsm_connect_failures_total"); err != nil {
		t.Error(err)
	}
	// Budgets are per label: two containers by name kept, then "other".
	if n := len(m.budgets[LabelContainer].values); n != 2 {
		t.Errorf("container values kept: %d", n)
	}
}

func TestMetadataLabelsWithinBudgetDoNotAllocate(t *testing.T) {
	m := New(Options{Labels: []Label{LabelNamespace, LabelWorkload, LabelContainer}}, build, fixedSnapshot)
	e := probe.Event{Type: uint8(probe.TypeState), Oldstate: uint8(probe.StateClose), Newstate: uint8(probe.StateSynSent),
		Owner: uint8(probe.OwnerTask), CgroupId: 5}
	md := podMeta("shop", "web-1", "nginx", "Deployment", "web")
	bare := &metadata.Meta{Runtime: "containerd", ID: "0123456789abcdef"}
	m.EventMeta(&e, md)
	m.EventMeta(&e, bare)
	if n := testing.AllocsPerRun(1000, func() { m.EventMeta(&e, md); m.EventMeta(&e, bare) }); n != 0 {
		t.Errorf("EventMeta allocates %.1f times", n)
	}
}

func TestMetadataSelfMetrics(t *testing.T) {
	snap := fixedSnapshot()
	st := &metadata.Stats{Entries: 5, Lookups: 10, Hits: 7, Misses: 3, Evictions: 1, Expirations: 2,
		WaitsResolved: 4, WaitsTimedOut: 1, WaitsUnknown: 2, WaitsDropped: 0,
		Sources: []metadata.SourceStats{{Runtime: "containerd", Up: false}, {Runtime: "podman", Up: true}}}
	st.Sources[0].Errors[metadata.ReasonSocketMissing] = 3
	st.Sources[0].Errors[metadata.ReasonUnavailable] = 1
	st.Sources[1].Errors[metadata.ReasonUnavailable] = 1
	snap.Metadata = st
	snap.RecordWaits = RecordWaits{Resolved: 6, TimedOut: 2, Dropped: 1}
	m := New(Options{}, build, func() Snapshot { return snap })
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	want := `
# HELP tcpfsm_metadata_source_up 1 while the container runtime's last list succeeded, by runtime.
# TYPE tcpfsm_metadata_source_up gauge
tcpfsm_metadata_source_up{runtime="containerd"} 0
tcpfsm_metadata_source_up{runtime="podman"} 1
# HELP tcpfsm_metadata_errors_total Failed lists of the container runtimes, by reason; records keep container ids meanwhile.
# TYPE tcpfsm_metadata_errors_total counter
tcpfsm_metadata_errors_total{reason="bad_response"} 0
tcpfsm_metadata_errors_total{reason="other"} 0
tcpfsm_metadata_errors_total{reason="permission_denied"} 0
tcpfsm_metadata_errors_total{reason="socket_missing"} 3
tcpfsm_metadata_errors_total{reason="timeout"} 0
tcpfsm_metadata_errors_total{reason="unavailable"} 2
tcpfsm_metadata_errors_total{reason="unsupported_api"} 0
# HELP tcpfsm_metadata_lookups_total Container metadata looked up, by whether it was known.
# TYPE tcpfsm_metadata_lookups_total counter
tcpfsm_metadata_lookups_total{result="hit"} 7
tcpfsm_metadata_lookups_total{result="miss"} 3
# HELP tcpfsm_metadata_cache_entries Containers (and ids the runtime did not know) in the metadata cache.
# TYPE tcpfsm_metadata_cache_entries gauge
tcpfsm_metadata_cache_entries 5
# HELP tcpfsm_metadata_cache_evictions_total Containers dropped from the metadata cache because it was full (metadata.cache_size).
# TYPE tcpfsm_metadata_cache_evictions_total counter
tcpfsm_metadata_cache_evictions_total 1
# HELP tcpfsm_metadata_cache_expirations_total Containers dropped from the metadata cache metadata.ttl after their runtime stopped listing them.
# TYPE tcpfsm_metadata_cache_expirations_total counter
tcpfsm_metadata_cache_expirations_total 2
# HELP tcpfsm_metadata_waits_total Waits for a container's metadata, by outcome: resolved, timeout, unknown (the runtime does not know it), dropped (too many waits).
# TYPE tcpfsm_metadata_waits_total counter
tcpfsm_metadata_waits_total{result="dropped"} 0
tcpfsm_metadata_waits_total{result="resolved"} 4
tcpfsm_metadata_waits_total{result="timeout"} 1
tcpfsm_metadata_waits_total{result="unknown"} 2
# HELP tcpfsm_metadata_record_waits_total Connection records held back for their container's metadata or their node-local peer's record, by outcome: resolved, timeout (logged with what was known), dropped (too many held).
# TYPE tcpfsm_metadata_record_waits_total counter
tcpfsm_metadata_record_waits_total{result="dropped"} 1
tcpfsm_metadata_record_waits_total{result="resolved"} 6
tcpfsm_metadata_record_waits_total{result="timeout"} 2
`
	names := []string{"tcpfsm_metadata_source_up", "tcpfsm_metadata_errors_total", "tcpfsm_metadata_lookups_total",
		"tcpfsm_metadata_cache_entries", "tcpfsm_metadata_cache_evictions_total", "tcpfsm_metadata_cache_expirations_total",
		"tcpfsm_metadata_waits_total", "tcpfsm_metadata_record_waits_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}

	// Without a resolver: no tcpfsm_metadata_* series at all.
	plain := New(Options{}, build, fixedSnapshot)
	reg = prometheus.NewPedanticRegistry()
	reg.MustRegister(plain)
	for _, n := range names {
		if family(t, reg, n) != nil {
			t.Errorf("%s without metadata", n)
		}
	}
}
