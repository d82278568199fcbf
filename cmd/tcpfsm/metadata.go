package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/settings"
	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/metadata/discover"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

// metaConfig is where container names come from and how records wait
// for them, for every command that traces.
type metaConfig struct {
	cri     string   // --cri.endpoint: "" finds it, "none"
	engines []string // --engine.endpoints: nil finds them, ["none"]
	entries int
	ttl     time.Duration
	wait    time.Duration // 0: default; negative: records never wait
	labels  []string      // pod labels records keep
}

// Bounds of the metadata settings.
const (
	minMetaEntries     = 16
	maxMetaEntries     = 1 << 20
	defaultMetaTTL     = 5 * time.Minute
	defaultMetaEntries = session.DefaultMetadataEntries
	minMetaWait        = 10 * time.Millisecond
)

func checkEndpoint(v string) error {
	if v == "" || v == discover.None {
		return nil
	}
	if p := strings.TrimPrefix(v, "unix://"); !strings.HasPrefix(p, "/") {
		return fmt.Errorf("want an absolute unix socket path, unix:///path, or none")
	}
	return nil
}

// metaSettings describe the metadata settings; records is false for
// trace, which prints what is known and never holds anything back.
func metaSettings(c *metaConfig, records bool) []settings.Setting {
	c.entries, c.ttl = session.DefaultMetadataEntries, defaultMetaTTL
	set := []settings.Setting{
		&settings.String{Spec: settings.Spec{Key: "metadata.cri_endpoint", Flag: "cri.endpoint",
			Help: "name pods from the CRI runtime on this unix `SOCKET` (containerd, CRI-O), or none",
			Doc: `The container runtime's CRI socket that names pods and their containers: a path or
				unix:///path, or none. Empty: the first of /run/containerd/containerd.sock,
				/run/k3s/containerd/containerd.sock and /var/run/crio/crio.sock that exists. A socket given is
				used even before it exists: names come once the runtime is up.`},
			Check: checkEndpoint,
			To:    func(v string) error { c.cri = v; return nil }},
		&settings.Strings{Spec: settings.Spec{Key: "metadata.engine_endpoints", Flag: "engine.endpoints",
			Help: "name plain containers from these Docker Engine or podman API `SOCKETS`, or none",
			Doc: `Docker Engine or podman API sockets that name plain containers (their name and image), or
				[none]. Empty: /var/run/docker.sock and /run/podman/podman.sock, those that exist.`},
			Check: checkEndpoint,
			To: func(v []string) error {
				if slices.Contains(v, discover.None) && len(v) > 1 {
					return fmt.Errorf("none excludes other endpoints")
				}
				c.engines = v
				return nil
			}},
		&settings.Int{Spec: settings.Spec{Key: "metadata.cache_size", Flag: "metadata.cache-size",
			Help: "remember at most `N` containers' metadata",
			Doc: `Containers whose metadata is remembered at most, the least recently used evicted beyond
				(tcpfsm_metadata_cache_evictions_total); each is a few hundred bytes.`},
			Default: session.DefaultMetadataEntries, Min: minMetaEntries, Max: maxMetaEntries,
			To: func(v int64) error { c.entries = int(v); return nil }},
		&settings.Duration{Spec: settings.Spec{Key: "metadata.ttl", Flag: "metadata.ttl",
			Help: "keep naming a container this `DURATION` after its runtime stopped listing it",
			Doc:  `How long a removed container stays named, for the late records of its connections.`},
			Default: defaultMetaTTL, Min: time.Second, Max: 24 * time.Hour,
			To: func(v time.Duration) error { c.ttl = v; return nil }},
	}
	if records {
		set = append(set, &settings.Duration{Spec: settings.Spec{Key: "metadata.wait", Flag: "metadata.wait",
			Help: "a record waits at most this `DURATION` for its container's name and its node-local peer's record",
			Doc: `How long a connection record whose container the runtime has not named yet (or whose
				node-local peer's record has not come) waits before it is logged with what is known; records
				stay in order, so it delays those behind it too. tcpfsm_metadata_record_waits_total counts
				the outcomes. 0: never wait.`},
			Default: session.DefaultMetadataWait, Min: minMetaWait, Max: session.MaxMetadataWait, Zero: "never wait",
			To: func(v time.Duration) error {
				if v == 0 {
					v = -1
				}
				c.wait = v
				return nil
			}})
	}
	return append(set, &settings.Strings{Spec: settings.Spec{Key: "metrics.pod_labels", Flag: "metrics.pod-labels",
		Help: "copy these pod `LABELS` into the records' k8s.labels (e.g. --metrics.pod-labels app)",
		Doc: `Pod labels copied into the metadata of records (k8s.labels in the logs), never into metric
			labels. Empty: none (label sets are large and may be sensitive). Example: [app, team]`},
		Check: func(v string) error {
			// A label key: an optional DNS subdomain prefix and "/", then
			// a name of letters, digits, -, _ and . (at most 63).
			prefix, name, ok := strings.Cut(v, "/")
			if !ok {
				prefix, name = "", v
			}
			if ok && !dnsSubdomain(prefix) || !containerName(name) || len(name) > 63 {
				return fmt.Errorf("want a pod label key, such as app or app.kubernetes.io/name")
			}
			return nil
		},
		To: func(v []string) error { c.labels = v; return nil }})
}

// sessionOptions hands the settings the session uses on.
func (c *metaConfig) sessionOptions(o *session.Options) {
	o.MetadataWait, o.MetadataEntries, o.PodLabels = c.wait, c.entries, c.labels
}

// open starts a resolver on the sources the settings name; nil when
// there is none (no runtime socket found, or every kind turned off).
func (c *metaConfig) open(log *slog.Logger) (*metadata.Resolver, error) {
	srcs, err := discover.Sources(discover.Options{CRIEndpoint: c.cri, EngineEndpoints: c.engines})
	if err != nil {
		return nil, usagef("%v", err)
	}
	if len(srcs) == 0 {
		return nil, nil
	}
	return metadata.New(metadata.Config{MaxEntries: c.entries, TTL: c.ttl, Logger: log}, srcs...), nil
}

// cliLogger is the resolver's logger for the commands that print: a
// warning line on stderr, without time.
func cliLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}))
}

// describeSources says where names come from, for the start-up line.
func describeSources(r *metadata.Resolver) string {
	var parts []string
	for _, s := range r.Stats().Sources {
		parts = append(parts, s.Runtime+" "+s.Endpoint)
	}
	return strings.Join(parts, ", ")
}

// metaFilter selects records and events by what the runtime says of
// their owner's container. A pod is selected in the kernel (its cgroup,
// like --cgroup) where the pod can be found at start; everything else,
// and the pod in replays, in user space on each record's metadata.
type metaFilter struct {
	podNamespace, pod string // --pod [NAMESPACE/]NAME
	podInKernel       bool   // the kernel filter holds the pod's cgroup
	namespace         string
	workloadKind      string // lower case; "" any
	workloadName      string
	containerName     string
}

// userSpace reports whether the filter has parts applied in user space.
func (f *metaFilter) userSpace() bool {
	return f.namespace != "" || f.workloadName != "" || f.containerName != "" || f.pod != "" && !f.podInKernel
}

// match applies the user-space part to a container's metadata (nil:
// nothing known, which no filter passes).
func (f *metaFilter) match(m *metadata.Meta) bool {
	if !f.userSpace() {
		return true
	}
	if m == nil {
		return false
	}
	p := &m.Pod
	switch {
	case f.namespace != "" && p.Namespace != f.namespace:
		return false
	case f.pod != "" && !f.podInKernel && (p.Name != f.pod || f.podNamespace != "" && p.Namespace != f.podNamespace):
		return false
	case f.workloadName != "" && (p.Workload.Name != f.workloadName || f.workloadKind != "" && !strings.EqualFold(p.Workload.Kind, f.workloadKind)):
		return false
	case f.containerName != "" && m.Name != f.containerName:
		return false
	}
	return true
}

// Names as Kubernetes has them: namespaces and container names are DNS
// labels (RFC 1123), pod and workload names DNS subdomains; plain
// containers' names (docker, podman) also take upper case, _ and .
func dnsLabel(v string) bool {
	if v == "" || len(v) > 63 || v[0] == '-' || v[len(v)-1] == '-' {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func dnsSubdomain(v string) bool {
	if v == "" || len(v) > 253 {
		return false
	}
	for _, part := range strings.Split(v, ".") {
		if !dnsLabel(part) {
			return false
		}
	}
	return true
}

func containerName(v string) bool {
	if v == "" || len(v) > 253 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || i > 0 && (c == '_' || c == '.' || c == '-')
		if !ok {
			return false
		}
	}
	return true
}

var workloadKinds = []string{metadata.WorkloadDeployment, metadata.WorkloadReplicaSet, metadata.WorkloadStatefulSet,
	metadata.WorkloadDaemonSet, metadata.WorkloadJob, metadata.WorkloadCronJob, metadata.WorkloadPod}

// podFilter is --pod, a kernel filter.
func podFilter(s *selection) settings.Setting {
	return &settings.String{Spec: settings.Spec{Key: "filter.pod", Flag: "pod",
		Help: "only connections of this Kubernetes `POD`'s containers, [NAMESPACE/]NAME (e.g. --pod shop/web-7d4b9c8f6-x2x4q)",
		Doc: `Only connections owned by the containers of this pod, [namespace/]name: found at start from
			the CRI runtime and applied in the kernel to the pod's cgroup, like cgroup. Excludes cgroup.
			Empty: all.`},
		Check: func(v string) error {
			if v == "" {
				return nil
			}
			ns, name, ok := strings.Cut(v, "/")
			if !ok {
				ns, name = "", v
			}
			if ok && !dnsLabel(ns) || !dnsSubdomain(name) {
				return fmt.Errorf("want NAME or NAMESPACE/NAME, as Kubernetes names them (lower case, digits, -)")
			}
			return nil
		},
		To: func(v string) error {
			ns, name, ok := strings.Cut(v, "/")
			if !ok {
				ns, name = "", v
			}
			s.meta.podNamespace, s.meta.pod = ns, name
			return nil
		}}
}

// metaFilters are the filters on the runtime's names applied in user
// space: every command but record takes them.
func metaFilters(s *selection) []settings.Setting {
	return []settings.Setting{
		&settings.String{Spec: settings.Spec{Key: "filter.namespace", Flag: "namespace",
			Help: "only connections of containers in this Kubernetes `NAMESPACE` (applied in user space)",
			Doc:  `Only connections owned by containers of pods in this namespace; applied in user space. Empty: all.`},
			Check: func(v string) error {
				if v != "" && !dnsLabel(v) {
					return fmt.Errorf("want a Kubernetes namespace (lower case, digits, -)")
				}
				return nil
			},
			To: func(v string) error { s.meta.namespace = v; return nil }},
		&settings.String{Spec: settings.Spec{Key: "filter.workload", Flag: "workload",
			Help: "only connections of this `[KIND/]NAME` workload's pods, e.g. deployment/web (applied in user space)",
			Doc: `Only connections owned by the pods of this workload, [kind/]name, kind one of deployment,
				replicaset, statefulset, daemonset, job, cronjob, pod (any kind when left out); applied in user
				space. Example: deployment/web`},
			Check: func(v string) error {
				if v == "" {
					return nil
				}
				kind, name, ok := strings.Cut(v, "/")
				if !ok {
					name = v
				}
				if !dnsSubdomain(name) || ok && !slices.ContainsFunc(workloadKinds, func(k string) bool { return strings.EqualFold(k, kind) }) {
					return fmt.Errorf("want [KIND/]NAME, KIND one of %s", strings.ToLower(strings.Join(workloadKinds, ", ")))
				}
				return nil
			},
			To: func(v string) error {
				kind, name, ok := strings.Cut(v, "/")
				if !ok {
					kind, name = "", v
				}
				s.meta.workloadKind, s.meta.workloadName = strings.ToLower(kind), name
				return nil
			}},
		&settings.String{Spec: settings.Spec{Key: "filter.container_name", Flag: "container-name",
			Help: "only connections of containers with this `NAME` (a pod's container, or a plain container's name; user space)",
			Doc:  `Only connections owned by containers of this name (a pod's container name, or a plain container's); applied in user space. Empty: all.`},
			Check: func(v string) error {
				if v != "" && !containerName(v) {
					return fmt.Errorf("want a container's name (letters, digits, _ . -)")
				}
				return nil
			},
			To: func(v string) error { s.meta.containerName = v; return nil }},
	}
}

// resolvePod turns --pod into the kernel filter on the pod's cgroup: the
// runtime names the pod's containers, the cgroup tree has them under one
// parent.
func resolvePod(s *selection, r *metadata.Resolver) error {
	f := &s.meta
	if f.pod == "" {
		return nil
	}
	name := f.pod
	if f.podNamespace != "" {
		name = f.podNamespace + "/" + f.pod
	}
	if s.kernel.CgroupID != 0 {
		return usagef("--pod and --cgroup exclude each other: both are the kernel's one cgroup filter")
	}
	if r == nil {
		return usagef("--pod %s needs the container runtime's CRI socket (none found: --cri.endpoint)", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A runtime that has not answered by then: the pod is looked up in
	// what it told so far, and a miss names the runtime that is down.
	_ = r.WaitSynced(ctx)
	var keys []metadata.Key
	namespaces := map[string]bool{}
	for _, m := range r.Known() {
		if m.Pod.Name == f.pod && (f.podNamespace == "" || m.Pod.Namespace == f.podNamespace) {
			keys = append(keys, metadata.Key{Runtime: m.Runtime, ID: m.ID})
			namespaces[m.Pod.Namespace] = true
		}
	}
	if len(namespaces) > 1 {
		var ns []string
		for n := range namespaces {
			ns = append(ns, n)
		}
		slices.Sort(ns)
		return usagef("--pod %s: pods of that name in namespaces %s: give NAMESPACE/NAME", name, strings.Join(ns, ", "))
	}
	if len(keys) == 0 {
		why := ""
		for _, src := range r.Stats().Sources {
			if !src.Up {
				why = fmt.Sprintf(" (%s at %s does not answer)", src.Runtime, src.Endpoint)
			}
		}
		return usagef("--pod %s: no such pod on this node%s", name, why)
	}
	root, err := cgroups.Mount()
	if err != nil {
		return err
	}
	paths := cgroups.FindContainers(root, func(c cgroups.Container) bool { return slices.Contains(keys, c) })
	if len(paths) == 0 {
		return usagef("--pod %s: none of its containers has a cgroup (not running?)", name)
	}
	parent := filepath.Dir(paths[0])
	for _, p := range paths[1:] {
		if filepath.Dir(p) != parent {
			return fmt.Errorf("--pod %s: its containers' cgroups %s and %s have no common pod cgroup", name, paths[0], p)
		}
	}
	id, level, err := probe.CgroupFilter(filepath.Join(root, parent))
	if err != nil {
		return fmt.Errorf("--pod %s: %w", name, err)
	}
	s.kernel.CgroupID, s.kernel.CgroupLevel, s.cgroupPath = id, level, parent
	f.podInKernel = true
	return nil
}

// named is m when the runtime named the container: filters look at
// names, and a bare id (a container not named yet) has none.
func named(m *metadata.Meta) *metadata.Meta {
	if m == nil || m.Name == "" && !m.InPod() {
		return nil
	}
	return m
}

// eventOwners names the containers of a live trace's events: cgroup id
// to container from the cgroup tree, then to what the runtime said, read
// without waiting (trace prints what is known). A container once named
// stays so; one not named yet is asked about at most every 100ms.
type eventOwners struct {
	cgroups *cgroups.Resolver
	names   *metadata.Resolver
	labels  []string
	owners  map[uint64]*eventOwner
}

type eventOwner struct {
	inContainer bool
	named       bool
	meta        metadata.Meta // Runtime and ID alone until named
	next        time.Time     // when to ask the runtime again
}

// maxEventOwners bounds the cgroups remembered; beyond it they are
// forgotten all at once and looked up again.
const maxEventOwners = 1 << 16

func newEventOwners(names *metadata.Resolver, labels []string) *eventOwners {
	return &eventOwners{cgroups: cgroups.NewResolver(""), names: names, labels: labels, owners: map[uint64]*eventOwner{}}
}

func (o *eventOwners) of(e *probe.Event) *metadata.Meta {
	if o == nil || !e.OwnerKnown() || e.CgroupId == 0 {
		return nil
	}
	w := o.owners[e.CgroupId]
	if w == nil {
		if len(o.owners) >= maxEventOwners {
			clear(o.owners)
		}
		w = &eventOwner{}
		if c, ok := o.cgroups.Container(e.CgroupId); ok {
			w.inContainer, w.meta = true, metadata.Meta{Runtime: c.Runtime, ID: c.ID}
		}
		o.owners[e.CgroupId] = w
	}
	if !w.inContainer {
		return nil
	}
	if !w.named {
		if now := time.Now(); now.After(w.next) {
			w.next = now.Add(100 * time.Millisecond)
			if m, ok := o.names.Lookup(metadata.Key{Runtime: w.meta.Runtime, ID: w.meta.ID}); ok {
				w.meta, w.named = keepLabels(m, o.labels), true
			}
		}
	}
	return &w.meta
}

// keepLabels is m with only the pod labels asked for.
func keepLabels(m metadata.Meta, keep []string) metadata.Meta {
	var kept map[string]string
	for _, k := range keep {
		if v, ok := m.Pod.Labels[k]; ok {
			if kept == nil {
				kept = map[string]string{}
			}
			kept[k] = v
		}
	}
	m.Pod.Labels = kept
	return m
}
