package cri_test

import (
	"context"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/containerd"
	"github.com/tcpfsm/tcpfsm/internal/testkit/ociimage"
	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/metadata/cri"
)

const busybox = "localhost/tcpfsm/busybox:1"

// fastConfig makes the resolver react within the test's time: lists
// after a miss at most every 100ms, retries from 100ms to 1s.
func fastConfig() metadata.Config {
	return metadata.Config{
		MinRefreshInterval: 100 * time.Millisecond,
		MinBackoff:         100 * time.Millisecond,
		MaxBackoff:         time.Second,
		CallTimeout:        5 * time.Second,
	}
}

// keyOf finds a container's key the way the tracer will: from the cgroup
// path of its process.
func keyOf(t *testing.T, ctrd *containerd.Containerd, id string) metadata.Key {
	t.Helper()
	path := containerd.CgroupPath(t, ctrd.PID(t, id))
	k, ok := cgroups.ParseContainer(path)
	if !ok {
		t.Fatalf("cgroup path %q of container %s names no container", path, id)
	}
	if k.ID != id || k.Runtime != cgroups.RuntimeContainerd {
		t.Fatalf("cgroup path %q: ParseContainer = %+v, want containerd:%s", path, k, id)
	}
	return k
}

// waitMeta waits up to d for k's metadata through Wait.
func waitMeta(r *metadata.Resolver, k metadata.Key, d time.Duration) (metadata.Meta, bool) {
	type answer struct {
		m  metadata.Meta
		ok bool
	}
	ch := make(chan answer, 1)
	r.Wait(k, d, func(m metadata.Meta, ok bool) { ch <- answer{m, ok} })
	a := <-ch
	return a.m, a.ok
}

// TestContainerdPods runs two pods in two namespaces, a Deployment's and
// a StatefulSet's, before the resolver starts, and a third in its own
// network namespace with a sandbox IP; the resolver's first list names
// every container exactly, by the key its cgroup path gives.
func TestContainerdPods(t *testing.T) {
	ctrd := containerd.Start(t)
	img := ctrd.Import(t, ociimage.Busybox(busybox))

	web := ctrd.RunPod(t, containerd.Pod{
		Name: "web-7d4b9c8f6-x2x4q", Namespace: "shop",
		Labels: map[string]string{"app": "web", "pod-template-hash": "7d4b9c8f6"},
	})
	// kubelet creates containers by image id: the name comes from ListImages.
	webID := ctrd.RunContainer(t, web, containerd.Container{Name: "nginx", Image: img.ConfigID})

	db := ctrd.RunPod(t, containerd.Pod{
		Name: "db-0", Namespace: "data",
		Labels: map[string]string{
			"app": "db", "controller-revision-hash": "db-5f8d6c7b9",
			"statefulset.kubernetes.io/pod-name": "db-0", "apps.kubernetes.io/pod-index": "0",
		},
	})
	dbID := ctrd.RunContainer(t, db, containerd.Container{Name: "postgres", Image: busybox})

	peer := ctrd.RunPod(t, containerd.Pod{Name: "peer", Namespace: "shop", IP: "127.0.0.42"})
	peerID := ctrd.RunContainer(t, peer, containerd.Container{Name: "client", Image: busybox})

	src, err := cri.New(ctrd.Socket, "")
	if err != nil {
		t.Fatal(err)
	}
	r := metadata.New(fastConfig(), src)
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}

	webPod := metadata.Pod{
		Namespace: "shop", Name: "web-7d4b9c8f6-x2x4q", UID: web.Pod.UID,
		Labels:   map[string]string{"app": "web", "pod-template-hash": "7d4b9c8f6"},
		Workload: metadata.Workload{Kind: "Deployment", Name: "web", Source: "pod-template-hash"},
	}
	dbPod := metadata.Pod{
		Namespace: "data", Name: "db-0", UID: db.Pod.UID,
		Labels: map[string]string{
			"app": "db", "controller-revision-hash": "db-5f8d6c7b9",
			"statefulset.kubernetes.io/pod-name": "db-0", "apps.kubernetes.io/pod-index": "0",
		},
		Workload: metadata.Workload{Kind: "StatefulSet", Name: "db", Source: "statefulset.kubernetes.io/pod-name"},
	}
	peerPod := metadata.Pod{
		Namespace: "shop", Name: "peer", UID: peer.Pod.UID, IP: netip.MustParseAddr("127.0.0.42"),
		Workload: metadata.Workload{Kind: "Pod", Name: "peer", Source: "pod"},
	}
	for _, tc := range []struct {
		id   string
		want metadata.Meta
	}{
		{webID, metadata.Meta{Runtime: "containerd", ID: webID, Name: "nginx", Image: busybox, Pod: webPod}},
		{dbID, metadata.Meta{Runtime: "containerd", ID: dbID, Name: "postgres", Image: busybox, Pod: dbPod}},
		{peerID, metadata.Meta{Runtime: "containerd", ID: peerID, Name: "client", Image: busybox, Pod: peerPod}},
	} {
		k := keyOf(t, ctrd, tc.id)
		got, ok := r.Lookup(k)
		if !ok {
			t.Errorf("%s/%s: not known after the first list; stats %+v", tc.want.Pod.Namespace, tc.want.Name, r.Stats())
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Lookup(%s)\n got %+v\nwant %+v", tc.id, got, tc.want)
		}
	}

	// The sandbox's own cgroup (the pause process) names the pod.
	sbKey := metadata.Key{Runtime: "containerd", ID: web.ID}
	if got, ok := r.Lookup(sbKey); !ok || !got.Sandbox || got.Name != "" || !reflect.DeepEqual(got.Pod, webPod) {
		t.Errorf("Lookup(sandbox %s) = %+v, %v; want the web pod, Sandbox", web.ID, got, ok)
	}

	// Peer by sandbox IP: only the pod in its own network namespace has one.
	if got, ok := r.LookupIP(netip.MustParseAddr("127.0.0.42")); !ok || got.ID != peer.ID || got.Pod.Name != "peer" {
		t.Errorf("LookupIP(127.0.0.42) = %+v, %v; want the peer pod's sandbox %s", got, ok, peer.ID)
	}
	if got, ok := r.LookupIP(netip.MustParseAddr("127.0.0.1")); ok {
		t.Errorf("LookupIP(127.0.0.1) = %+v: host-network pods must not claim the node's addresses", got)
	}

	st := r.Stats()
	if st.Sources[0].Runtime != "containerd" || !st.Sources[0].Up || st.Sources[0].Lists != 1 ||
		st.Sources[0].Endpoint != "unix://"+ctrd.Socket || st.ErrorsTotal() != [metadata.NumReasons]uint64{} {
		t.Errorf("stats after one list: %+v", st.Sources[0])
	}
	// 3 pods: 3 sandboxes and 3 containers.
	if st.Entries != 6 || st.Hits != 4 || st.Misses != 0 {
		t.Errorf("stats: %d entries, %d hits, %d misses; want 6, 4, 0", st.Entries, st.Hits, st.Misses)
	}
}

// TestContainerdRestart: a container started after the first list is
// found by the list its miss causes; with containerd stopped, errors are
// counted, cached containers still named and new ids unknown; after the
// restart names come back.
func TestContainerdRestart(t *testing.T) {
	ctrd := containerd.Start(t)
	ctrd.Import(t, ociimage.Busybox(busybox))
	pod := ctrd.RunPod(t, containerd.Pod{
		Name: "agent-x7k2p", Namespace: "kube-system",
		Labels: map[string]string{"app": "agent", "controller-revision-hash": "6b8f7c9d5", "pod-template-generation": "3"},
	})
	first := ctrd.RunContainer(t, pod, containerd.Container{Name: "first", Image: busybox})

	src, err := cri.New("unix://"+ctrd.Socket, "")
	if err != nil {
		t.Fatal(err)
	}
	r := metadata.New(fastConfig(), src)
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	firstKey := keyOf(t, ctrd, first)
	want := metadata.Workload{Kind: "DaemonSet", Name: "agent", Source: "pod-template-generation"}
	if m, ok := r.Lookup(firstKey); !ok || m.Name != "first" || m.Pod.Workload != want {
		t.Fatalf("Lookup(first) = %+v, %v", m, ok)
	}

	// Started after the first list: unknown at once, found by Wait.
	second := ctrd.RunContainer(t, pod, containerd.Container{Name: "second", Image: busybox})
	secondKey := keyOf(t, ctrd, second)
	if m, ok := r.Lookup(secondKey); ok {
		// The miss-driven list may only have run already if a resync did.
		t.Fatalf("Lookup(second) right after its start = %+v: the resolver cannot have listed it yet", m)
	}
	if m, ok := waitMeta(r, secondKey, 5*time.Second); !ok || m.Name != "second" || m.Pod.Name != "agent-x7k2p" || m.Pod.Workload != want {
		t.Fatalf("Wait(second) = %+v, %v; stats %+v", m, ok, r.Stats())
	}
	before := r.Stats()
	if before.WaitsResolved != 1 || before.Sources[0].Lists != 2 {
		t.Errorf("after the miss: %d waits resolved, %d lists; want 1, 2", before.WaitsResolved, before.Sources[0].Lists)
	}

	// containerd goes away (its pods keep running under their shims).
	ctrd.Stop(t)
	unknown := metadata.Key{Runtime: "containerd", ID: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
	start := time.Now()
	if m, ok := waitMeta(r, unknown, 1500*time.Millisecond); ok {
		t.Fatalf("Wait(unknown id) with containerd stopped = %+v", m)
	}
	if d := time.Since(start); d < 1400*time.Millisecond || d > 3*time.Second {
		t.Errorf("Wait(unknown) gave up after %v, want its 1.5s", d)
	}
	down := r.Stats()
	errs := down.ErrorsTotal()
	var total uint64
	for _, n := range errs {
		total += n
	}
	if down.Sources[0].Up || total == 0 || errs[metadata.ReasonSocketMissing]+errs[metadata.ReasonUnavailable] != total {
		t.Errorf("with containerd stopped: up %v, errors %v; want down, all socket_missing or unavailable", down.Sources[0].Up, errs)
	}
	if down.WaitsTimedOut != 1 {
		t.Errorf("waits timed out = %d, want 1", down.WaitsTimedOut)
	}
	for _, k := range []metadata.Key{firstKey, secondKey} {
		if m, ok := r.Lookup(k); !ok || m.Pod.Name != "agent-x7k2p" {
			t.Errorf("Lookup(%s) with containerd stopped = %+v, %v; want the cached pod", k.ID, m, ok)
		}
	}
	t.Logf("containerd stopped: errors by reason %v", errs)

	// Back: a container made after the restart is named again.
	ctrd.Restart(t)
	third := ctrd.RunContainer(t, pod, containerd.Container{Name: "third", Image: busybox})
	thirdKey := keyOf(t, ctrd, third)
	if m, ok := waitMeta(r, thirdKey, 10*time.Second); !ok || m.Name != "third" || m.Pod.Namespace != "kube-system" {
		t.Fatalf("Wait(third) after the restart = %+v, %v; stats %+v", m, ok, r.Stats())
	}
	if up := r.Stats().Sources[0]; !up.Up {
		t.Errorf("source not up after the restart: %+v", up)
	}
}
