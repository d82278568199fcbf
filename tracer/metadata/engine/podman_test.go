package engine_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/containerd"
	"github.com/tcpfsm/tcpfsm/internal/testkit/ociimage"
	"github.com/tcpfsm/tcpfsm/internal/testkit/podman"
	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/metadata/engine"
)

const busybox = "localhost/tcpfsm/busybox:1"

// TestPodman: plain containers through podman's Docker-compatible API.
// The socket is not named podman: the source finds out from /version.
// A container run before the resolver is named by its first list, one
// run after by Wait; with the service stopped errors are counted and
// the cache serves; after its restart names come back.
func TestPodman(t *testing.T) {
	pm := podman.Start(t)
	pm.Load(t, ociimage.Busybox(busybox))
	web := pm.Run(t, "web", busybox, map[string]string{"app": "web"})

	src, err := engine.New(pm.Socket, "")
	if err != nil {
		t.Fatal(err)
	}
	if src.Runtime() != cgroups.RuntimeDocker {
		t.Fatalf("runtime guessed from %s = %s, want docker before /version", pm.Socket, src.Runtime())
	}
	r := metadata.New(metadata.Config{MinRefreshInterval: 100 * time.Millisecond, MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}, src)
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}

	keyOf := func(id string) metadata.Key {
		t.Helper()
		path := containerd.CgroupPath(t, pm.PID(t, id))
		k, ok := cgroups.ParseContainer(path)
		if !ok || k != (metadata.Key{Runtime: cgroups.RuntimePodman, ID: id}) {
			t.Fatalf("cgroup path %q: ParseContainer = %+v, %v; want podman:%s", path, k, ok, id)
		}
		return k
	}
	want := metadata.Meta{Runtime: "podman", ID: web, Name: "web", Image: busybox}
	if got, ok := r.Lookup(keyOf(web)); !ok || !reflect.DeepEqual(got, want) {
		t.Fatalf("Lookup(web) = %+v, %v; want %+v", got, ok, want)
	}

	wait := func(k metadata.Key, d time.Duration) (metadata.Meta, bool) {
		ch := make(chan metadata.Meta, 1)
		var found bool
		r.Wait(k, d, func(m metadata.Meta, ok bool) { found = ok; ch <- m })
		m := <-ch
		return m, found
	}
	late := pm.Run(t, "late", busybox, nil)
	if m, ok := wait(keyOf(late), 5*time.Second); !ok || m.Name != "late" || m.Image != busybox {
		t.Fatalf("Wait(late) = %+v, %v", m, ok)
	}

	pm.StopService(t)
	unknown := metadata.Key{Runtime: "podman", ID: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
	if m, ok := wait(unknown, time.Second); ok {
		t.Fatalf("Wait(unknown) with the service stopped = %+v", m)
	}
	st := r.Stats()
	errs := st.ErrorsTotal()
	if st.Sources[0].Up || errs[metadata.ReasonSocketMissing]+errs[metadata.ReasonUnavailable] == 0 || st.WaitsTimedOut != 1 {
		t.Errorf("service stopped: up %v, errors %v, waits timed out %d", st.Sources[0].Up, errs, st.WaitsTimedOut)
	}
	if m, ok := r.Lookup(keyOf(web)); !ok || m.Name != "web" {
		t.Errorf("Lookup(web) with the service stopped = %+v, %v; want the cached entry", m, ok)
	}
	t.Logf("service stopped: errors by reason %v", errs)

	if err := pm.StartService(); err != nil {
		t.Fatal(err)
	}
	again := pm.Run(t, "again", busybox, nil)
	if m, ok := wait(keyOf(again), 10*time.Second); !ok || m.Name != "again" {
		t.Fatalf("Wait(again) after the restart = %+v, %v; stats %+v", m, ok, r.Stats())
	}
}
