// Package metadata names the containers that own connections: from the
// container id a cgroup path gives (cgroups.ParseContainer: runtime and
// id) to the pod's namespace, name, uid, labels and sandbox IP, the
// container's name and image, and the workload (Deployment, StatefulSet,
// DaemonSet, Job, CronJob) inferred from the pod's labels and name. It
// asks the runtime, never the Kubernetes API: kubelet hands all of it to
// the runtime with the sandbox, so no token or RBAC is needed.
//
// Sources: package cri (containerd, CRI-O: CRI v1 on the runtime's
// socket) and package engine (Docker Engine and podman's compatible API,
// for plain containers and cri-dockerd pods); package discover finds
// them at the standard paths or takes the endpoints a user gave.
//
// # Never on the event path
//
// A Resolver keeps a bounded cache filled by one goroutine per source:
// a list of everything at start (so containers older than tcpfsm are
// named), again after an unknown id was looked up (coalesced: the misses
// between two lists share one, at most every MinRefreshInterval), every
// ResyncInterval, and with backoff while the runtime fails. Lookup is a
// map read under a mutex, no allocation; a miss only marks the id for the
// next list. Wait is the primitive for a record that closes before its
// metadata arrived: the caller picks how long it may wait, and is called
// back once, with the metadata or without it, counted either way.
// Failures (socket missing, permission denied, runtime restarting, an
// API version it does not serve) are counted by Reason, warned about once
// per kind and outage, and survived: the cache keeps serving, new ids stay
// unknown, and names come back with the runtime.
//
// # Integration (phase 2, once the lifecycle/session/render refactors land)
//
// Where records get it. The session owns a Resolver (started with the
// tracer, closed with it) beside its cgroups.Resolver. The builder's
// annotate step already turns a record's cgroup id into its path and
// Container ("runtime:id"); the session keeps that Key (cgroups.Container)
// rather than only the string. When a record closes, or when the agent
// logs an open one, the finishing side calls Lookup(key): on a hit the
// Meta is attached to lifecycle.Record (a pointer or a small value field
// Meta, set once, never on the per-event path). On a miss the record is
// handed to a bounded delay queue and Wait(key, --metadata.wait, default
// 1s) re-queues it for output when the answer comes; records are emitted
// in close order per output, so a waiting record holds back only those
// behind it in its queue, never the event loop. Timed-out waits are logged
// with the id alone and counted (Stats.WaitsTimedOut). Live views (trace)
// never wait: they print what Lookup has.
//
// JSON (life -o json, trace -o json, agent logs): beside "container"
// (runtime:id, unchanged) a "container_name" and "image", and for pods
//
//	"k8s": {"namespace": "shop", "pod": "web-7d4b9c8f6-x2x4q", "uid": "…",
//	        "container": "nginx",
//	        "workload": {"kind": "Deployment", "name": "web", "source": "pod-template-hash"},
//	        "labels": {"app": "web"}}
//
// where "labels" holds only the keys --metrics.pod-labels lists (none by
// default: label sets are large and may be sensitive), and a "peer_k8s"
// object of the same shape (without container) when the remote address is
// a pod sandbox IP on this node (LookupIP). Host-network pods share the
// node's addresses and have no sandbox IP: their peer on this node is
// the other end's own record (both ends of a loopback or node-local
// connection are traced, each named by its owner's cgroup), found by the
// swapped 4-tuple in the same network namespace. Absent when unknown;
// never empty strings.
//
// Tables (trace, life): the owner column shows namespace/pod/container,
// or the plain container's name, when known, else the id as today; wide
// output (-o wide) adds workload and image.
//
// Metrics: new optional labels namespace, pod, workload (kind/name) and
// container (by name) for exporter/metrics's label list, each inside the
// existing per-label budget with its "other" bucket. Today's "container"
// label is runtime:id: either it becomes the name when known (the id
// otherwise), or the id moves to container_id; a choice for the lead, as
// it changes existing series; the Options.ContainerOf callback becomes a MetaOf(cgroupID)
// that does Lookup. pod is off by default (pods churn; the budget then
// makes most of them "other"); namespace and workload are the ones to turn
// on. Pod labels never become metric labels. Self-metrics from Stats:
// tcpfsm_metadata_errors_total{reason} (ErrorsTotal), _source_up{runtime},
// _lookups_total{result=hit|miss}, _cache_entries, _cache_evictions_total,
// _cache_expirations_total, _waits_total{result=resolved|timeout|unknown|
// dropped}.
//
// Filters (--namespace, --pod, --workload, --container-name, for every
// command): a single pod becomes the kernel's cgroup filter: a pod's
// containers live below one cgroup (/kubepods[/<qos>]/pod<uid> with the
// cgroupfs driver, kubepods-<qos>-pod<uid_>.slice with systemd), the
// parent of any of its containers' cgroups, so --pod resolves the pod
// (Known) and sets probe's filter_cgroup/filter_cgroup_level like --cgroup
// does: exact, and nothing of other pods crosses the ring buffer. That
// filter is one cgroup fixed at load time, so --namespace, --workload and
// --container-name (sets that change as pods come and go) are applied in
// user space on the Meta of each record, documented as such; a later
// kernel version could keep a BPF hash of allowed pod cgroup ids updated
// from Known. A filter needs the metadata, so records of unknown owners
// wait (bounded) as above and are dropped by the filter if still unknown.
//
// Deploy: the DaemonSet mounts /run/containerd/containerd.sock (or
// /var/run/crio/crio.sock, /run/k3s/containerd/containerd.sock) read-only;
// --cri.endpoint names another.
package metadata
