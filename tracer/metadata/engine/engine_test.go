package engine

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/metadata"
)

// serve answers the engine API paths with fixed bodies on a unix socket.
func serve(t *testing.T, bodies map[string]string, status int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := bodies[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.URL.Path != "/version" && status != 0 {
			w.WriteHeader(status)
		}
		_, _ = w.Write([]byte(b))
	})}
	go func() { _ = srv.Serve(l) }() // returns at Close
	t.Cleanup(func() { srv.Close() })
	return path
}

const dockerVersion = `{"Version":"27.5.1","ApiVersion":"1.47","Components":[{"Name":"Engine","Version":"27.5.1"}]}`

// A docker host running kubelet through cri-dockerd: the sandbox
// ("pause") container carries the pod's labels, the others kubelet's.
const criDockerdList = `[
 {"Id":"aaaa","Names":["/k8s_POD_web-7d4b9c8f6-x2x4q_shop_u-1_0"],"Image":"registry.k8s.io/pause:3.9","ImageID":"sha256:p",
  "Labels":{"io.kubernetes.pod.name":"web-7d4b9c8f6-x2x4q","io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.uid":"u-1",
   "io.kubernetes.docker.type":"podsandbox","app":"web","pod-template-hash":"7d4b9c8f6"}},
 {"Id":"bbbb","Names":["/k8s_nginx_web-7d4b9c8f6-x2x4q_shop_u-1_0"],"Image":"sha256:1234","ImageID":"sha256:1234",
  "Labels":{"io.kubernetes.pod.name":"web-7d4b9c8f6-x2x4q","io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.uid":"u-1",
   "io.kubernetes.docker.type":"container","io.kubernetes.container.name":"nginx"}},
 {"Id":"cccc","Names":["/redis"],"Image":"redis:7","ImageID":"sha256:r","Labels":{"com.docker.compose.project":"x"}}
]`

func TestList(t *testing.T) {
	path := serve(t, map[string]string{"/version": dockerVersion, "/containers/json": criDockerdList}, 0)
	s, err := New(path, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	got, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pod := metadata.Pod{Namespace: "shop", Name: "web-7d4b9c8f6-x2x4q", UID: "u-1",
		Labels:   map[string]string{"app": "web", "pod-template-hash": "7d4b9c8f6"},
		Workload: metadata.Workload{Kind: "Deployment", Name: "web", Source: "pod-template-hash"}}
	want := []metadata.Meta{
		{ID: "aaaa", Image: "registry.k8s.io/pause:3.9", Sandbox: true, Pod: pod},
		{ID: "bbbb", Name: "nginx", Image: "sha256:1234", Pod: pod},
		{ID: "cccc", Name: "redis", Image: "redis:7"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("List\n got %+v\nwant %+v", got, want)
	}
	if s.Runtime() != "docker" {
		t.Errorf("runtime %s, want docker", s.Runtime())
	}
}

func TestListErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bodies map[string]string
		status int
		want   metadata.Reason
	}{
		{"no such endpoint", map[string]string{"/version": dockerVersion}, 0, metadata.ReasonUnsupportedAPI},
		{"garbage", map[string]string{"/version": dockerVersion, "/containers/json": "<html>"}, 0, metadata.ReasonBadResponse},
		{"server error", map[string]string{"/version": dockerVersion, "/containers/json": "{}"}, 500, metadata.ReasonUnavailable},
		{"forbidden (an authz plugin)", map[string]string{"/version": dockerVersion, "/containers/json": "{}"}, 403, metadata.ReasonPermissionDenied},
	} {
		s, _ := New(serve(t, tc.bodies, tc.status), "")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := s.List(ctx)
		cancel()
		if r := metadata.ReasonOf(err); err == nil || r != tc.want {
			t.Errorf("%s: err %v, reason %v; want %v", tc.name, err, r, tc.want)
		}
	}
	s, _ := New(filepath.Join(t.TempDir(), "none.sock"), "")
	if _, err := s.List(context.Background()); metadata.ReasonOf(err) != metadata.ReasonSocketMissing {
		t.Errorf("missing socket: %v, reason %v", err, metadata.ReasonOf(err))
	}
}
