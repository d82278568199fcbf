package discover

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/metadata/cri"
	"github.com/tcpfsm/tcpfsm/tracer/metadata/engine"
)

func TestFind(t *testing.T) {
	dir := t.TempDir()
	sock := func(name string) string {
		p := filepath.Join(dir, name)
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return p
	}
	k3s, crio, podman := sock("k3s.sock"), sock("crio.sock"), sock("podman.sock")
	plain := filepath.Join(dir, "not-a-socket")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	criDefaults := []cri.Endpoint{
		{Path: filepath.Join(dir, "containerd.sock"), Runtime: "containerd"}, // missing
		{Path: plain, Runtime: "containerd"},                                 // a file, not a socket
		{Path: k3s, Runtime: "containerd"},
		{Path: crio, Runtime: "cri-o"},
	}
	engineDefaults := []engine.Endpoint{{Path: filepath.Join(dir, "docker.sock"), Runtime: "docker"}, {Path: podman, Runtime: "podman"}}

	endpoints := func(ss []metadata.Source) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.Runtime()+" "+s.Endpoint())
			s.Close()
		}
		return out
	}
	for _, tc := range []struct {
		name string
		o    Options
		want []string
	}{
		{"defaults: the first CRI socket, every engine socket", Options{},
			[]string{"containerd unix://" + k3s, "podman unix://" + podman}},
		{"explicit, even when absent", Options{CRIEndpoint: "unix:///run/nothing/crio.sock", EngineEndpoints: []string{None}},
			[]string{"cri-o unix:///run/nothing/crio.sock"}},
		{"none", Options{CRIEndpoint: None, EngineEndpoints: []string{None}}, nil},
	} {
		ss, err := find(tc.o, criDefaults, engineDefaults)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := endpoints(ss); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if _, err := find(Options{CRIEndpoint: "localhost:1234"}, nil, nil); err == nil {
		t.Error("a TCP CRI endpoint was accepted")
	}
}
