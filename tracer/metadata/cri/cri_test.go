package cri

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
)

func listReason(t *testing.T, s *Source) metadata.Reason {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := s.List(ctx)
	if err == nil {
		t.Fatal("List succeeded")
	}
	return metadata.ReasonOf(err)
}

func TestReasons(t *testing.T) {
	dir := t.TempDir()

	// No socket at all.
	s, err := New(filepath.Join(dir, "missing.sock"), "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if r := listReason(t, s); r != metadata.ReasonSocketMissing {
		t.Errorf("missing socket: reason %v, want socket_missing", r)
	}

	// A socket nobody listens on any more: refused.
	path := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	s2, _ := New(path, "")
	defer s2.Close()
	if r := listReason(t, s2); r != metadata.ReasonUnavailable {
		t.Errorf("stale socket: reason %v, want unavailable", r)
	}

	// A gRPC server that does not serve CRI v1 (a runtime that only
	// knows v1alpha2 answers the same way).
	path = filepath.Join(dir, "old.sock")
	l, err = net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	go func() { _ = srv.Serve(l) }() // returns at Stop
	defer srv.Stop()
	s3, _ := New(path, "")
	defer s3.Close()
	if r := listReason(t, s3); r != metadata.ReasonUnsupportedAPI {
		t.Errorf("no v1 service: reason %v, want unsupported_api", r)
	}
}

// A runtime answering v1 with another API version is refused, and the
// runtime's name corrects the guess from the path.
type versionOnly struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	name, api string
}

func (v versionOnly) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: v.name, RuntimeVersion: "1.0", RuntimeApiVersion: v.api}, nil
}

func TestVersion(t *testing.T) {
	for _, tc := range []struct {
		name, api   string
		wantReason  metadata.Reason // after Version: ListPodSandbox is unimplemented
		wantRuntime string
	}{
		{"cri-o", "v1", metadata.ReasonUnsupportedAPI, cgroups.RuntimeCRIO},
		{"containerd", "v1alpha2", metadata.ReasonUnsupportedAPI, cgroups.RuntimeContainerd},
	} {
		path := filepath.Join(t.TempDir(), "containerd.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		runtimeapi.RegisterRuntimeServiceServer(srv, versionOnly{name: tc.name, api: tc.api})
		go func() { _ = srv.Serve(l) }() // returns at Stop
		s, _ := New("unix://"+path, "")
		if s.Runtime() != cgroups.RuntimeContainerd {
			t.Errorf("guess for %s: %s", path, s.Runtime())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = s.List(ctx)
		cancel()
		if metadata.ReasonOf(err) != tc.wantReason || s.Runtime() != tc.wantRuntime {
			t.Errorf("%s %s: List err %v (reason %v), runtime %s; want %v, %s",
				tc.name, tc.api, err, metadata.ReasonOf(err), s.Runtime(), tc.wantReason, tc.wantRuntime)
		}
		s.Close()
		srv.Stop()
	}
}

func TestNewRejectsBadEndpoints(t *testing.T) {
	for _, e := range []string{"", "relative.sock", "tcp://1.2.3.4:5", "unix://relative"} {
		if _, err := New(e, ""); err == nil {
			t.Errorf("New(%q) accepted", e)
		}
	}
	if s, err := New("/var/run/crio/crio.sock", ""); err != nil || s.Runtime() != cgroups.RuntimeCRIO {
		t.Errorf("New(crio.sock) = %v, %v; want a cri-o source", s, err)
	}
}

func TestImageName(t *testing.T) {
	id := "sha256:557dd23cf44cc01f9f5e0f66296df19f8de9d0e2b73bde832d9d5d7414b76254"
	for _, tc := range []struct {
		c      *runtimeapi.Container
		want   string
		isName bool
	}{
		{&runtimeapi.Container{Image: &runtimeapi.ImageSpec{Image: id, UserSpecifiedImage: "nginx:1.27"}, ImageRef: id}, "nginx:1.27", true},
		{&runtimeapi.Container{Image: &runtimeapi.ImageSpec{Image: "docker.io/library/nginx:1.27"}, ImageRef: id}, "docker.io/library/nginx:1.27", true},
		{&runtimeapi.Container{Image: &runtimeapi.ImageSpec{Image: id}, ImageRef: id}, id, false},
		{&runtimeapi.Container{ImageRef: id}, id, false},
		{&runtimeapi.Container{Image: &runtimeapi.ImageSpec{Image: "registry:5000/cafe:beef"}}, "registry:5000/cafe:beef", true},
	} {
		got, isName := imageName(tc.c)
		if got != tc.want || isName != tc.isName {
			t.Errorf("imageName(%v) = %q, %v; want %q, %v", tc.c, got, isName, tc.want, tc.isName)
		}
	}
}
