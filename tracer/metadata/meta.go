package metadata

import (
	"net/netip"
	"strings"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
)

// Key names a container as the cgroup path does: cgroups.ParseContainer's
// result. The runtime picks the source that is asked.
type Key = cgroups.Container

// Meta is what the runtime says about one container. Maps are shared
// between lookups and must not be changed.
type Meta struct {
	Runtime string // cgroups.Runtime*: the runtime whose socket told it
	ID      string // the container id, as in the cgroup path

	Name  string // the container's name: CRI's metadata name, docker's name without "/"
	Image string // the image as a user would name it ("nginx:1.27"); a digest or id when no name is known
	// Sandbox is true for a pod's sandbox ("pause") container: Name is
	// empty and the pod fields describe the pod.
	Sandbox bool

	Pod Pod // empty for plain containers
}

// InPod reports whether the container belongs to a Kubernetes pod.
func (m *Meta) InPod() bool { return m.Pod.Name != "" }

// Pod is the Kubernetes pod of a container, from its CRI sandbox.
type Pod struct {
	Namespace string
	Name      string
	UID       string
	// IP is the pod's sandbox IP; invalid for host-network pods, which
	// share the node's addresses.
	IP     netip.Addr
	Labels map[string]string // the pod's labels, kubelet's and the runtime's own keys left out
	// Annotations are not kept: they can be large (last-applied
	// configuration) and nothing here needs them.

	Workload Workload
}

// Workload is the controller that runs a pod, as inferred from the pod's
// labels and name (CRI carries no owner references).
type Workload struct {
	Kind string // WorkloadDeployment, ...
	Name string
	// Source says which rule inferred it (Source* constants), for the
	// record: an inference is not an owner reference.
	Source string
}

// Workload kinds.
const (
	WorkloadDeployment  = "Deployment"
	WorkloadReplicaSet  = "ReplicaSet"
	WorkloadStatefulSet = "StatefulSet"
	WorkloadDaemonSet   = "DaemonSet"
	WorkloadJob         = "Job"
	WorkloadCronJob     = "CronJob"
	WorkloadPod         = "Pod" // a bare pod, or one whose owner nothing tells
)

// internalLabel reports whether a sandbox label is kubelet's or the
// runtime's bookkeeping rather than one of the pod's own labels: kubelet
// adds io.kubernetes.pod.{name,namespace,uid} to the sandbox's labels and
// containerd adds io.cri-containerd.kind.
func internalLabel(k string) bool {
	return strings.HasPrefix(k, "io.kubernetes.") || strings.HasPrefix(k, "io.cri-containerd.") ||
		strings.HasPrefix(k, "io.containerd.")
}

// PodLabels copies a sandbox's labels without the internal ones; nil when
// none are left.
func PodLabels(sandbox map[string]string) map[string]string {
	var out map[string]string
	for k, v := range sandbox {
		if internalLabel(k) {
			continue
		}
		if out == nil {
			out = make(map[string]string, len(sandbox))
		}
		out[k] = v
	}
	return out
}
