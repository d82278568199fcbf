package session

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"math/rand/v2"
	"os"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

var update = flag.Bool("update", false, "rewrite tracer/testdata/k8s-mix.rec")

// The containers of k8s-mix.rec: loopback-mix.rec's server side (its
// listeners' ports) in a Deployment's pod, its client side in a
// StatefulSet's, both host-network pods of this node as kubelet's
// cgroupfs driver places them.
var (
	mixWeb = metadata.Meta{Runtime: "containerd", ID: "5e2b4f0c6a1d4e8b9c7f3a2d1e0b6c5a4f3e2d1c0b9a8f7e6d5c4b3a29180716",
		Name: "nginx", Image: "docker.io/library/nginx:1.27",
		Pod: metadata.Pod{Namespace: "shop", Name: "web-7d4b9c8f6-x2x4q", UID: "3f6c1a52-8d2e-4b7a-9c41-0e5d6f7a8b9c",
			Labels:   map[string]string{"app": "web", "pod-template-hash": "7d4b9c8f6"},
			Workload: metadata.Workload{Kind: metadata.WorkloadDeployment, Name: "web", Source: metadata.LabelPodTemplateHash}}}
	mixLoad = metadata.Meta{Runtime: "containerd", ID: "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90",
		Name: "client", Image: "registry.example/loadgen:2.1",
		Pod: metadata.Pod{Namespace: "batch", Name: "loadgen-0", UID: "9b8a7c6d-5e4f-4321-8765-43210fedcba9",
			Labels: map[string]string{"app": "loadgen", "controller-revision-hash": "loadgen-6c9d8b7f5",
				"statefulset.kubernetes.io/pod-name": "loadgen-0"},
			Workload: metadata.Workload{Kind: metadata.WorkloadStatefulSet, Name: "loadgen", Source: metadata.LabelStatefulSetPodName}}}
)

func podCgroup(m metadata.Meta) string {
	return "/kubepods/besteffort/pod" + m.Pod.UID + "/" + m.ID
}

const (
	mixSource = "../testdata/loopback-mix.rec"
	mixK8s    = "../testdata/k8s-mix.rec"
	webCgroup = 1001
	loadCgrp  = 1002
)

// k8sInputs are loopback-mix.rec's inputs with their owners moved into
// the two pods' cgroups: an event or socket on one of the listeners'
// ports is the server's, every other one the client's.
func k8sInputs(t testing.TB) (recording.Header, []recording.Input) {
	t.Helper()
	f, err := os.Open(mixSource)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd, err := recording.NewReader(f, probe.EventSize)
	if err != nil {
		t.Fatal(err)
	}
	var all []recording.Input
	for {
		var x recording.Input
		if err := rd.Read(&x); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		all = append(all, x)
	}
	listeners := map[uint16]bool{}
	for _, x := range all {
		if x.Kind == recording.KindEvent && x.Event.NewState() == probe.StateListen {
			listeners[x.Event.Sport] = true
		}
	}
	owner := func(id uint64, port uint16) uint64 {
		switch {
		case id == 0:
			return 0
		case listeners[port]:
			return webCgroup
		}
		return loadCgrp
	}
	var out []recording.Input
	cgroupsIn := false
	for _, x := range all {
		if !cgroupsIn && (x.Kind == recording.KindEvent || x.Kind == recording.KindSocket) {
			// The session records a cgroup's path before its first event.
			out = append(out,
				recording.Input{Kind: recording.KindCgroup, Cgroup: recording.Cgroup{ID: webCgroup, Path: podCgroup(mixWeb)}},
				recording.Input{Kind: recording.KindCgroup, Cgroup: recording.Cgroup{ID: loadCgrp, Path: podCgroup(mixLoad)}})
			cgroupsIn = true
		}
		switch x.Kind {
		case recording.KindCgroup:
			continue
		case recording.KindEvent:
			x.Event.CgroupId = owner(x.Event.CgroupId, x.Event.Sport)
		case recording.KindSocket:
			x.Socket.CgroupID = owner(x.Socket.CgroupID, x.Socket.Lport)
		}
		out = append(out, x)
	}
	return rd.Header(), out
}

// fixedRuntime is a metadata source with fixed answers: Lookup knows
// what known holds; with async, nothing is known at first and Wait
// answers from another goroutine after a random delay.
type fixedRuntime struct {
	known map[metadata.Key]metadata.Meta
	async bool
	wg    sync.WaitGroup
}

func (f *fixedRuntime) Lookup(k metadata.Key) (metadata.Meta, bool) {
	if f.async {
		return metadata.Meta{}, false
	}
	m, ok := f.known[k]
	return m, ok
}

func (f *fixedRuntime) Wait(k metadata.Key, d time.Duration, fn func(metadata.Meta, bool)) {
	m, ok := f.known[k]
	if !f.async {
		fn(m, ok)
		return
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
		fn(m, ok)
	}()
}

func (f *fixedRuntime) PodIPs(gen uint64) (uint64, []metadata.Meta) { return 0, nil }

// recordCopies keeps every record handed out, with its names.
type recordCopies struct {
	calls []handedOut
	recs  []lifecycle.Record
}

func (c *recordCopies) Closed(r *lifecycle.Record) {
	c.calls = append(c.calls, handedOut{true, r.ID, metaName(r.Meta), metaName(r.Peer)})
	c.recs = append(c.recs, *r)
}

func (c *recordCopies) Finished(r *lifecycle.Record) {
	c.calls = append(c.calls, handedOut{false, r.ID, metaName(r.Meta), metaName(r.Peer)})
	c.recs = append(c.recs, *r)
}

// liveRun feeds inputs through a session's live path (as Open and Run
// do, without a probe), writing the recording it makes to out.
func liveRun(t testing.TB, hdr recording.Header, inputs []recording.Input, rt MetaResolver, h lifecycle.Handler, out io.Writer) {
	t.Helper()
	w, err := recording.NewWriter(out, hdr)
	if err != nil {
		t.Fatal(err)
	}
	s := &Session{opts: Options{Record: w, Metadata: rt, PodLabels: []string{"app"}}}
	s.in = newIngest(h, lifecycle.Config{}, nil)
	started := false
	for i := range inputs {
		x := inputs[i]
		if !started && x.Kind != recording.KindFeatures {
			// As Open: after the features, before anything else.
			if err := s.startMeta(); err != nil {
				t.Fatal(err)
			}
			started = true
		}
		if err := s.input(&x); err != nil {
			t.Fatal(err)
		}
		if x.Kind == recording.KindTick { // drained
			if err := s.metaInputs(); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.mu.Lock()
	s.in.b.Flush()
	s.mu.Unlock()
	if err := s.finishMeta(); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
}

func replayBytes(t testing.TB, data []byte, h lifecycle.Handler) {
	t.Helper()
	rd, err := recording.NewReader(bytes.NewReader(data), probe.EventSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Replay(rd, ReplayOptions{Handler: h}); err != nil {
		t.Fatal(err)
	}
}

func mixRuntime(async bool) *fixedRuntime {
	return &fixedRuntime{async: async, known: map[metadata.Key]metadata.Meta{
		{Runtime: mixWeb.Runtime, ID: mixWeb.ID}:   mixWeb,
		{Runtime: mixLoad.Runtime, ID: mixLoad.ID}: mixLoad,
	}}
}

// k8s-mix.rec is what a live session with a fixed metadata source makes
// of loopback-mix.rec's traffic moved into two pods: the golden views of
// cmd/tcpfsm replay it (TestReplayEveryRecordingGolden). -update
// rewrites it.
func TestK8sMixRecording(t *testing.T) {
	hdr, inputs := k8sInputs(t)
	var live recordCopies
	var buf bytes.Buffer
	liveRun(t, hdr, inputs, mixRuntime(false), &live, &buf)
	if *update {
		if err := os.WriteFile(mixK8s, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	committed, err := os.ReadFile(mixK8s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, buf.Bytes()) {
		t.Errorf("%s is not what the live path makes of %s now (go test ./tracer/session -run TestK8sMixRecording -update)", mixK8s, mixSource)
	}

	// Every connection of the mix is between the two pods; every record
	// of a connection names its own side's container and, once
	// established, the other side's.
	named := 0
	for i, r := range live.recs {
		if r.Role == lifecycle.RoleListener || !r.OwnerKnown() {
			continue
		}
		self, other := &mixLoad, &mixWeb
		if r.CgroupID == webCgroup {
			self, other = other, self
		}
		c := live.calls[i]
		if c.meta != metaName(self) {
			t.Errorf("%v: want meta %q", c, metaName(self))
		}
		if r.Meta != nil && (r.Meta.Pod.Labels["app"] == "" || len(r.Meta.Pod.Labels) != 1) {
			t.Errorf("%v: labels %v, want only app", c, r.Meta.Pod.Labels)
		}
		if localPeer(&r) && c.peer != metaName(other) {
			t.Errorf("%v: want peer %q", c, metaName(other))
		}
		named++
	}
	if named < 8 {
		t.Errorf("only %d records named: %v", named, live.calls)
	}
}

// A replay hands out the records the live run did, in its order, with the
// same names, however late the runtime's answers came: run with answers
// that come from other goroutines after random delays, a few times.
func TestMetaReplayEqualsLive(t *testing.T) {
	hdr, inputs := k8sInputs(t)
	for i := range 5 {
		rt := mixRuntime(true)
		var live, replayed recordCopies
		var buf bytes.Buffer
		liveRun(t, hdr, inputs, rt, &live, &buf)
		rt.wg.Wait()
		replayBytes(t, buf.Bytes(), &replayed)
		if !reflect.DeepEqual(live.calls, replayed.calls) {
			t.Fatalf("run %d: replay differs from the live run:\nlive   %v\nreplay %v", i, live.calls, replayed.calls)
		}
		for j := range live.recs {
			a, b := live.recs[j], replayed.recs[j]
			if !reflect.DeepEqual(a.Meta, b.Meta) || !reflect.DeepEqual(a.Peer, b.Peer) {
				t.Errorf("run %d, record %d: metadata differs", i, a.ID)
			}
			a.Meta, a.Peer, b.Meta, b.Peer = nil, nil, nil, nil
			if a != b {
				t.Errorf("run %d, record %d differs", i, a.ID)
			}
		}
		if len(live.calls) == 0 || live.calls[0].meta == "" && live.calls[len(live.calls)-1].meta == "" {
			t.Errorf("run %d: nothing named: %v", i, live.calls)
		}
	}
}
