package jsonl

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

var (
	webMeta = metadata.Meta{Runtime: "containerd", ID: "abc", Name: "nginx", Image: "nginx:1.27",
		Pod: metadata.Pod{Namespace: "shop", Name: "web-7d4b9c8f6-x2x4q", UID: "u-1",
			Labels:   map[string]string{"tier": "front", "app": "w\"eb"},
			Workload: metadata.Workload{Kind: "Deployment", Name: "web", Source: "pod-template-hash"}}}
	// A peer known by its sandbox IP: the pod, no container.
	dbSandbox = metadata.Meta{Runtime: "containerd", ID: "sb", Sandbox: true,
		Pod: metadata.Pod{Namespace: "data", Name: "db-0", UID: "u-2",
			Workload: metadata.Workload{Kind: "StatefulSet", Name: "db", Source: "statefulset.kubernetes.io/pod-name"}}}
	plain = metadata.Meta{Runtime: "podman", ID: "def", Name: "cache", Image: "redis:7"}
)

func metaRecord(m, peer *metadata.Meta) lifecycle.Record {
	r := lifecycle.Record{ID: 9, Role: lifecycle.RoleActive, Family: probe.AFInet, Lport: 40000, Rport: 5432,
		Owner: probe.OwnerTask, Pid: 7, CgroupID: 3, Cgroup: "/kubepods/podu-1/abc", Container: "containerd:abc",
		Start: 1, End: 2, Meta: m, Peer: peer}
	copy(r.Comm[:], "nginx")
	return r
}

func decodeLine(t *testing.T, line []byte) map[string]any {
	t.Helper()
	var got map[string]any
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("invalid JSON %s: %v", line, err)
	}
	return got
}

func TestRecordMetaJSON(t *testing.T) {
	r := metaRecord(&webMeta, &dbSandbox)
	line := AppendRecord(nil, &r, testClock)
	// The fields in their places, the labels sorted.
	for _, want := range []string{
		`"container":"containerd:abc","container_name":"nginx","image":"nginx:1.27","source":"task"},` +
			`"k8s":{"namespace":"shop","pod":"web-7d4b9c8f6-x2x4q","uid":"u-1","container":"nginx",` +
			`"workload":{"kind":"Deployment","name":"web","source":"pod-template-hash"},"labels":{"app":"w\"eb","tier":"front"}},` +
			`"peer_k8s":{"namespace":"data","pod":"db-0","uid":"u-2",` +
			`"workload":{"kind":"StatefulSet","name":"db","source":"statefulset.kubernetes.io/pod-name"}},"handshake_ns"`,
	} {
		if !strings.Contains(string(line), want) {
			t.Errorf("record JSON lacks\n%s\nin\n%s", want, line)
		}
	}
	got := decodeLine(t, line)
	k8s := got["k8s"].(map[string]any)
	if k8s["labels"].(map[string]any)["app"] != `w"eb` {
		t.Errorf("labels: %v", k8s["labels"])
	}

	// A plain container: its name and image, no k8s; no peer.
	r = metaRecord(&plain, nil)
	got = decodeLine(t, AppendRecord(nil, &r, testClock))
	owner := got["owner"].(map[string]any)
	if owner["container_name"] != "cache" || owner["image"] != "redis:7" || got["k8s"] != nil || got["peer_k8s"] != nil {
		t.Errorf("plain container: owner %v, k8s %v, peer %v", owner, got["k8s"], got["peer_k8s"])
	}

	// Nothing known: the record of before.
	r = metaRecord(nil, nil)
	got = decodeLine(t, AppendRecord(nil, &r, testClock))
	for _, k := range []string{"k8s", "peer_k8s"} {
		if _, ok := got[k]; ok {
			t.Errorf("%s present without metadata", k)
		}
	}
	if _, ok := got["owner"].(map[string]any)["container_name"]; ok {
		t.Error("container_name present without metadata")
	}
}

// Empty fields are left out, never "".
func TestK8sLeavesOutEmpty(t *testing.T) {
	m := metadata.Meta{Runtime: "cri-o", ID: "x", Sandbox: true, Pod: metadata.Pod{Namespace: "ns", Name: "p"}}
	b := appendK8s(nil, "k8s", &m)
	if string(b) != `,"k8s":{"namespace":"ns","pod":"p"}` {
		t.Errorf("got %s", b)
	}
}

func TestEventMetaJSON(t *testing.T) {
	e := event(probe.AFInet, "127.0.0.1", "127.0.0.1", 8080, 50000, probe.StateSynRecv, probe.StateEstablished)
	got := decodeLine(t, AppendEventMeta(nil, &e, testClock, &webMeta))
	k8s, _ := got["k8s"].(map[string]any)
	if got["container"] != "containerd:abc" || got["container_name"] != "nginx" || got["image"] != "nginx:1.27" ||
		k8s["pod"] != "web-7d4b9c8f6-x2x4q" || k8s["container"] != "nginx" {
		t.Errorf("event with metadata: %v", got)
	}
	plainEvent := decodeLine(t, AppendEvent(nil, &e, testClock))
	withNil := decodeLine(t, AppendEventMeta(nil, &e, testClock, nil))
	if !reflect.DeepEqual(plainEvent, withNil) {
		t.Error("AppendEventMeta(nil) differs from AppendEvent")
	}
}

func TestMetaEncodeDoesNotAllocate(t *testing.T) {
	r := metaRecord(&webMeta, &dbSandbox)
	e := event(probe.AFInet, "127.0.0.1", "127.0.0.1", 8080, 50000, probe.StateSynRecv, probe.StateEstablished)
	buf := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(500, func() { buf = AppendRecord(buf[:0], &r, testClock) }); n != 0 {
		t.Errorf("AppendRecord with metadata allocates %.1f times", n)
	}
	if n := testing.AllocsPerRun(500, func() { buf = AppendEventMeta(buf[:0], &e, testClock, &webMeta) }); n != 0 {
		t.Errorf("AppendEventMeta allocates %.1f times", n)
	}
}
