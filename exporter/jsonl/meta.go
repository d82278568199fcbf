package jsonl

import (
	"slices"

	"github.com/tcpfsm/tcpfsm/tracer/metadata"
)

// What the container runtime said about an owner (tracer/metadata),
// beside the cgroup's container id:
//
//	"container_name": "nginx", "image": "nginx:1.27"        (in the owner)
//	"k8s": {"namespace": "shop", "pod": "web-7d4b9c8f6-x2x4q", "uid": "…",
//	        "container": "nginx",
//	        "workload": {"kind": "Deployment", "name": "web", "source": "pod-template-hash"},
//	        "labels": {"app": "web"}}
//
// and "peer_k8s", the same for the pod at the other end (its
// "container" only when the other end's own record named it). A field
// the runtime did not give is left out, never an empty string.

// appendContainerFields appends ,"container_name":…,"image":… of m.
func appendContainerFields(b []byte, m *metadata.Meta) []byte {
	if m.Name != "" {
		b = append(b, `,"container_name":`...)
		b = AppendString(b, m.Name)
	}
	if m.Image != "" {
		b = append(b, `,"image":`...)
		b = AppendString(b, m.Image)
	}
	return b
}

// appendK8s appends ,"<key>":{…} when m is in a pod.
func appendK8s(b []byte, key string, m *metadata.Meta) []byte {
	if m == nil || !m.InPod() {
		return b
	}
	p := &m.Pod
	b = appendKey(b, key)
	b = append(b, '{')
	first := true
	field := func(k, v string) {
		if v == "" {
			return
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, k...)
		b = append(b, '"', ':')
		b = AppendString(b, v)
	}
	field("namespace", p.Namespace)
	field("pod", p.Name)
	field("uid", p.UID)
	field("container", m.Name)
	if w := &p.Workload; w.Kind != "" {
		b = append(b, `,"workload":{"kind":`...)
		b = AppendString(b, w.Kind)
		b = append(b, `,"name":`...)
		b = AppendString(b, w.Name)
		if w.Source != "" {
			b = append(b, `,"source":`...)
			b = AppendString(b, w.Source)
		}
		b = append(b, '}')
	}
	if len(p.Labels) > 0 {
		b = append(b, `,"labels":`...)
		b = appendLabels(b, p.Labels)
	}
	return append(b, '}')
}

// appendLabels appends the labels as an object, sorted by key: without
// allocating for the few labels records keep.
func appendLabels(b []byte, labels map[string]string) []byte {
	var buf [16]string
	keys := buf[:0]
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendString(b, k)
		b = append(b, ':')
		b = AppendString(b, labels[k])
	}
	return append(b, '}')
}
