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
// # Integration
//
// Where records get it. The session owns the Resolver's use (the command
// makes one from discover's sources and hands it in as
// session.Options.Metadata): between the builder and the handlers, its
// metadata stage (tracer/session/metadata.go) attaches to each record,
// once, where it is handed out, the Meta of its owner's container
// (lifecycle.Record.Meta: cgroup id, path, ParseContainer's Key) and of its
// peer (Record.Peer), pointers to values shared and never changed.
//
// It decides from its inputs alone, so replays attach what the live run
// attached: the stage asks (Lookup, else Wait) when it first sees a
// container's cgroup, and the answers, found or not, enter the input
// stream as recording.KindMeta inputs right after the input that asked,
// or at the next drain when they come later (so do pod sandbox IPs, from
// PodIPs). A record whose container was asked about and not answered yet,
// or whose node-local peer's record has not come, waits in a FIFO at most
// the session's metadata wait (--metadata.wait, default 1s) in input time
// (ticks), then goes out with what is known, counted; records keep their
// order, so one that waits holds back those behind it, never the event
// loop. A container the runtime did not name is asked about again at
// most every 5s by its later records, so names come back after an outage.
// trace, which reads the probe itself, never waits: it prints what Lookup
// has.
//
// Peers: both ends of a connection on loopback or to its own address are
// traced, each named by its owner's cgroup; the other end's record, found
// by the swapped 4-tuple in the same network namespace, names the peer
// (container included), the two ends waiting for each other where the
// kernel filter passes both (no port, pid or cgroup filter). Else the
// remote address is looked up among this node's pod sandbox IPs (LookupIP's
// data, the pod without its container).
//
// JSON (life -o json, trace -o json, agent logs, exporter/jsonl/meta.go):
// beside "container" (runtime:id, unchanged) a "container_name" and
// "image", and for pods
//
//	"k8s": {"namespace": "shop", "pod": "web-7d4b9c8f6-x2x4q", "uid": "…",
//	        "container": "nginx",
//	        "workload": {"kind": "Deployment", "name": "web", "source": "pod-template-hash"},
//	        "labels": {"app": "web"}}
//
// where "labels" holds only the keys --metrics.pod-labels lists, and
// "peer_k8s" of the same shape. Absent when unknown; never empty strings.
//
// Tables (trace, life): a last CONTAINER column, namespace/pod/container,
// the plain container's name, or runtime:<12 hex>, when a runtime's socket
// was found (replays: when the recording's session had one).
//
// Metrics: optional labels namespace, pod, workload (kind/name, kubectl's
// "deployment/web") and container, which is the name when the runtime
// named it and runtime:id otherwise (it was runtime:id alone before), each
// inside the per-label budget with its "other" bucket; pod labels never
// become metric labels. Self-metrics from Stats: tcpfsm_metadata_errors_total{reason},
// _source_up{runtime}, _lookups_total{result}, _cache_entries,
// _cache_evictions_total, _cache_expirations_total, _waits_total{result};
// and the session's _record_waits_total{result}.
//
// Filters (every command): --pod becomes the kernel's cgroup filter on
// the pod's cgroup, the parent of its containers' (found at start from
// Known and the cgroup tree); --namespace, --workload and --container-name
// apply in user space to each record's (and event's) metadata.
//
// Deploy: the DaemonSet mounts /run/containerd (CRI-O: /var/run/crio;
// k3s: /run/k3s/containerd) read-only, the directory so a restarted
// runtime's new socket is seen.
package metadata
