package text

import (
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

func TestContainerColumn(t *testing.T) {
	id := strings.Repeat("0123456789abcdef", 4)
	pod := &metadata.Meta{Runtime: "containerd", ID: id, Name: "nginx", Pod: metadata.Pod{Namespace: "shop", Name: "web-1"}}
	sandbox := &metadata.Meta{Runtime: "containerd", ID: id, Sandbox: true, Pod: metadata.Pod{Namespace: "shop", Name: "web-1"}}
	for _, tc := range []struct {
		container string
		m         *metadata.Meta
		want      string
	}{
		{"containerd:" + id, pod, "shop/web-1/nginx"},
		{"containerd:" + id, sandbox, "shop/web-1"},
		{"podman:" + id, &metadata.Meta{Runtime: "podman", ID: id, Name: "cache\x1b"}, "cache?"},
		{"docker:" + id, &metadata.Meta{Runtime: "docker", ID: id}, "docker:0123456789ab"},
		{"cri-o:" + id, nil, "cri-o:0123456789ab"},
		{"lxc:web", nil, "lxc:web"},
		{"", nil, "-"},
	} {
		if got := string(AppendContainer(nil, tc.container, tc.m)); got != tc.want {
			t.Errorf("AppendContainer(%q, %+v) = %q, want %q", tc.container, tc.m, got, tc.want)
		}
	}

	e := event(probe.AFInet, "127.0.0.1", "127.0.0.1", 8080, 50000, probe.StateSynRecv, probe.StateEstablished)
	row := string(AppendEventRowContainer(nil, &e, testClock, "containerd:"+id, pod))
	plain := string(AppendEventRow(nil, &e, testClock))
	if row != strings.TrimSuffix(plain, "\n")+"  shop/web-1/nginx\n" {
		t.Errorf("event row with the column:\n%q\nwithout:\n%q", row, plain)
	}
	if h := EventHeaderContainer(); !strings.HasPrefix(h, EventHeader()) || !strings.HasSuffix(h, "  CONTAINER") {
		t.Errorf("header %q", h)
	}
	r := lifecycle.Record{Family: probe.AFInet, Container: "containerd:" + id, Owner: probe.OwnerTask, End: 5}
	if got := string(AppendLifeRowContainer(nil, &r, testClock)); !strings.HasSuffix(got, "  containerd:0123456789ab\n") || strings.Count(got, "\n") != 1 {
		t.Errorf("life row %q", got)
	}
}
