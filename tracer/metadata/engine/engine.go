// Package engine is a metadata.Source for plain containers: the Docker
// Engine API, which podman's API service also speaks, over its unix
// socket. Two read-only calls (GET /version, GET /containers/json) need
// no client library.
package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
)

// Endpoint is an engine socket and the runtime expected behind it.
type Endpoint struct {
	Path    string
	Runtime string // cgroups.Runtime*
}

// DefaultEndpoints are the rootful sockets of docker and podman
// (podman.socket); podman-docker links docker.sock to podman's, which
// Version tells.
var DefaultEndpoints = []Endpoint{
	{"/var/run/docker.sock", cgroups.RuntimeDocker},
	{"/run/podman/podman.sock", cgroups.RuntimePodman},
}

// maxBody bounds an answer: a container in the list is about 1 KiB.
const maxBody = 32 << 20

// Source lists an engine's containers.
type Source struct {
	path   string
	client *http.Client

	mu      sync.Mutex
	runtime string
	checked bool
}

// New returns a source for the engine socket at endpoint (a path or a
// unix:// URL); runtime "" guesses from the path and Version corrects
// it. It does not connect.
func New(endpoint, runtime string) (*Source, error) {
	path := strings.TrimPrefix(endpoint, "unix://")
	if path == "" || !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("engine endpoint %q: want an absolute unix socket path or unix:///path", endpoint)
	}
	if runtime == "" {
		runtime = cgroups.RuntimeDocker
		if strings.Contains(path, "podman") {
			runtime = cgroups.RuntimePodman
		}
	}
	s := &Source{path: path, runtime: runtime}
	s.client = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:    1,
		IdleConnTimeout: 30 * time.Second,
	}}
	return s, nil
}

// Discover returns sources for the default endpoints whose sockets
// exist.
func Discover() ([]*Source, error) {
	var out []*Source
	for _, e := range DefaultEndpoints {
		fi, err := os.Stat(e.Path)
		if err != nil || fi.Mode()&os.ModeSocket == 0 {
			continue
		}
		s, err := New(e.Path, e.Runtime)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Runtime implements metadata.Source.
func (s *Source) Runtime() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runtime
}

// Endpoint implements metadata.Source.
func (s *Source) Endpoint() string { return "unix://" + s.path }

// Close implements metadata.Source.
func (s *Source) Close() error {
	s.client.CloseIdleConnections()
	return nil
}

type version struct {
	Version    string
	APIVersion string `json:"ApiVersion"`
	Components []struct{ Name string }
}

type container struct {
	ID      string `json:"Id"`
	Names   []string
	Image   string
	ImageID string
	Labels  map[string]string
}

// List implements metadata.Source: every container, stopped ones too.
func (s *Source) List(ctx context.Context) ([]metadata.Meta, error) {
	if err := s.checkVersion(ctx); err != nil {
		return nil, err
	}
	var cs []container
	if err := s.get(ctx, "/containers/json?all=1", &cs); err != nil {
		s.mu.Lock()
		s.checked = false
		s.mu.Unlock()
		return nil, err
	}
	out := make([]metadata.Meta, 0, len(cs))
	sandboxes := map[string]metadata.Pod{} // by pod uid
	for _, c := range cs {
		m := toMeta(c)
		if m.Sandbox {
			sandboxes[m.Pod.UID] = m.Pod
		}
		out = append(out, m)
	}
	for i := range out {
		if m := &out[i]; m.InPod() && !m.Sandbox {
			if sb, ok := sandboxes[m.Pod.UID]; ok {
				m.Pod.Labels, m.Pod.Workload = sb.Labels, sb.Workload
			}
		}
	}
	return out, nil
}

func (s *Source) checkVersion(ctx context.Context) error {
	s.mu.Lock()
	checked := s.checked
	s.mu.Unlock()
	if checked {
		return nil
	}
	var v version
	if err := s.get(ctx, "/version", &v); err != nil {
		return err
	}
	rt := cgroups.RuntimeDocker
	for _, c := range v.Components {
		if strings.Contains(strings.ToLower(c.Name), "podman") {
			rt = cgroups.RuntimePodman
		}
	}
	s.mu.Lock()
	s.runtime, s.checked = rt, true
	s.mu.Unlock()
	return nil
}

func (s *Source) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://engine"+path, nil)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return err // ReasonOf finds the errno or the deadline in the chain
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusBadRequest:
		// 400: "client version too old/new"; 404: no such endpoint
		return metadata.Errorf(metadata.ReasonUnsupportedAPI, "GET %s: %s", path, resp.Status)
	case resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized:
		return metadata.Errorf(metadata.ReasonPermissionDenied, "GET %s: %s", path, resp.Status)
	case resp.StatusCode >= 500:
		return metadata.Errorf(metadata.ReasonUnavailable, "GET %s: %s", path, resp.Status)
	case resp.StatusCode != http.StatusOK:
		return metadata.Errorf(metadata.ReasonOther, "GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(v); err != nil {
		return metadata.Errorf(metadata.ReasonBadResponse, "GET %s: %v", path, err)
	}
	return nil
}

// Labels cri-dockerd (and dockershim before it) put on the containers of
// Kubernetes pods.
const (
	labelPodName       = "io.kubernetes.pod.name"
	labelPodNamespace  = "io.kubernetes.pod.namespace"
	labelPodUID        = "io.kubernetes.pod.uid"
	labelContainerName = "io.kubernetes.container.name"
	labelDockerType    = "io.kubernetes.docker.type" // "podsandbox" or "container"
)

func toMeta(c container) metadata.Meta {
	m := metadata.Meta{ID: c.ID, Image: c.Image}
	if len(c.Names) > 0 {
		m.Name = strings.TrimPrefix(c.Names[0], "/")
	}
	if m.Image == "" || strings.HasPrefix(m.Image, "sha256:") {
		m.Image = c.ImageID
	}
	if pod := c.Labels[labelPodName]; pod != "" {
		// A pod's container under cri-dockerd: the docker name is
		// k8s_<container>_<pod>_<namespace>_<uid>_<attempt>.
		m.Pod = metadata.Pod{Namespace: c.Labels[labelPodNamespace], Name: pod, UID: c.Labels[labelPodUID]}
		if c.Labels[labelDockerType] == "podsandbox" {
			// The sandbox carries the pod's labels.
			m.Sandbox, m.Name = true, ""
			m.Pod.Labels = metadata.PodLabels(c.Labels)
		} else {
			m.Name = c.Labels[labelContainerName]
		}
		m.Pod.Workload = metadata.InferWorkload(pod, m.Pod.Labels)
	}
	return m
}
