// Package cri is a metadata.Source for the runtimes Kubernetes talks to
// through the Container Runtime Interface (containerd, CRI-O): the v1 CRI
// API over the runtime's unix socket, read only (Version, ListPodSandbox,
// PodSandboxStatus, ListContainers, ListImages). No Kubernetes API token
// is needed: kubelet hands the pod's name, namespace, uid and labels to
// the runtime with the sandbox.
package cri

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
)

// Endpoint is a CRI socket and the runtime expected behind it.
type Endpoint struct {
	Path    string
	Runtime string // cgroups.Runtime*
}

// DefaultEndpoints are where the runtimes put their CRI sockets, in the
// order Discover tries them (kubelet's --container-runtime-endpoint
// defaults and the distributions' units).
var DefaultEndpoints = []Endpoint{
	{"/run/containerd/containerd.sock", cgroups.RuntimeContainerd},
	{"/run/k3s/containerd/containerd.sock", cgroups.RuntimeContainerd}, // k3s, rke2
	{"/var/run/crio/crio.sock", cgroups.RuntimeCRIO},
}

// maxMsgSize is kubelet's limit for CRI answers: a node's list of
// containers can exceed gRPC's 4 MiB default.
const maxMsgSize = 16 << 20

// Source lists a CRI runtime's pods and containers.
type Source struct {
	path string

	conn   *grpc.ClientConn
	rt     runtimeapi.RuntimeServiceClient
	images runtimeapi.ImageServiceClient

	mu       sync.Mutex
	runtime  string
	checked  bool                  // Version said v1 since the last failure
	dialErr  error                 // the last dial's error, for the reason
	sandboxI map[string]netip.Addr // sandbox id → IP: fixed for a sandbox's life
}

// New returns a source for the CRI socket at endpoint (a path or a
// unix:// URL). runtime is the cgroups.Runtime* expected there; "" guesses
// from the path (CRI-O's socket is crio.sock), and the runtime's Version
// answer corrects it. It does not connect: List does, and reconnects.
func New(endpoint, runtime string) (*Source, error) {
	path := strings.TrimPrefix(endpoint, "unix://")
	if path == "" || !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("CRI endpoint %q: want an absolute unix socket path or unix:///path", endpoint)
	}
	if runtime == "" {
		runtime = cgroups.RuntimeContainerd
		if strings.Contains(path, "crio") {
			runtime = cgroups.RuntimeCRIO
		}
	}
	s := &Source{path: path, runtime: runtime, sandboxI: map[string]netip.Addr{}}
	conn, err := grpc.NewClient("passthrough:///"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("localhost"),
		grpc.WithContextDialer(s.dial),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize)),
		// Reconnect soon after a runtime restart; the resolver's own
		// backoff spaces the calls.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("CRI endpoint %q: %w", endpoint, err)
	}
	s.conn = conn
	s.rt = runtimeapi.NewRuntimeServiceClient(conn)
	s.images = runtimeapi.NewImageServiceClient(conn)
	return s, nil
}

// Discover returns a source for the first default endpoint whose socket
// exists, nil when none does.
func Discover() (*Source, error) {
	for _, e := range DefaultEndpoints {
		if fi, err := os.Stat(e.Path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return New(e.Path, e.Runtime)
		}
	}
	return nil, nil
}

func (s *Source) dial(ctx context.Context, _ string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", s.path)
	s.mu.Lock()
	s.dialErr = err
	s.mu.Unlock()
	return c, err
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
func (s *Source) Close() error { return s.conn.Close() }

// List implements metadata.Source: the pod sandboxes and containers in
// every state.
func (s *Source) List(ctx context.Context) ([]metadata.Meta, error) {
	metas, err := s.list(ctx)
	if err != nil {
		s.mu.Lock()
		s.checked = false // a restarted runtime may be another version
		s.mu.Unlock()
		return nil, s.classify(err)
	}
	return metas, nil
}

func (s *Source) list(ctx context.Context) ([]metadata.Meta, error) {
	if err := s.checkVersion(ctx); err != nil {
		return nil, err
	}
	sbs, err := s.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil, fmt.Errorf("ListPodSandbox: %w", err)
	}
	ctrs, err := s.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, fmt.Errorf("ListContainers: %w", err)
	}

	pods := make(map[string]metadata.Pod, len(sbs.Items))
	metas := make([]metadata.Meta, 0, len(sbs.Items)+len(ctrs.Containers))
	seen := make(map[string]bool, len(sbs.Items))
	for _, sb := range sbs.Items {
		md := sb.GetMetadata()
		if md == nil {
			continue
		}
		p := metadata.Pod{Namespace: md.Namespace, Name: md.Name, UID: md.Uid, Labels: metadata.PodLabels(sb.Labels)}
		p.Workload = metadata.InferWorkload(p.Name, p.Labels)
		if sb.State == runtimeapi.PodSandboxState_SANDBOX_READY {
			ip, err := s.sandboxIP(ctx, sb.Id)
			if err != nil {
				return nil, err
			}
			p.IP = ip
		}
		seen[sb.Id] = true
		pods[sb.Id] = p
		metas = append(metas, metadata.Meta{ID: sb.Id, Sandbox: true, Pod: p})
	}
	s.forgetSandboxes(seen)

	var tags map[string]string // image id → name, listed only when needed
	for _, c := range ctrs.Containers {
		m := metadata.Meta{ID: c.Id, Name: c.GetMetadata().GetName(), Pod: pods[c.PodSandboxId]}
		if m.Pod.Name == "" {
			m.Pod = podFromContainerLabels(c.Labels) // its sandbox is gone
		}
		img, isName := imageName(c)
		if !isName {
			if tags == nil {
				if tags, err = s.imageTags(ctx); err != nil {
					return nil, err
				}
			}
			if t, ok := tags[img]; ok {
				img = t
			} else if t, ok := tags[c.ImageRef]; ok {
				img = t
			}
		}
		m.Image = img
		metas = append(metas, m)
	}
	return metas, nil
}

// checkVersion asks for CRI v1 once per connection.
func (s *Source) checkVersion(ctx context.Context) error {
	s.mu.Lock()
	checked := s.checked
	s.mu.Unlock()
	if checked {
		return nil
	}
	v, err := s.rt.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
	if err != nil {
		return fmt.Errorf("Version: %w", err)
	}
	if v.RuntimeApiVersion != "" && v.RuntimeApiVersion != "v1" && !strings.HasPrefix(v.RuntimeApiVersion, "v1.") {
		return metadata.Errorf(metadata.ReasonUnsupportedAPI, "CRI runtime %s %s serves API %s, not v1", v.RuntimeName, v.RuntimeVersion, v.RuntimeApiVersion)
	}
	s.mu.Lock()
	s.checked = true
	switch v.RuntimeName {
	case "containerd":
		s.runtime = cgroups.RuntimeContainerd
	case "cri-o":
		s.runtime = cgroups.RuntimeCRIO
	}
	s.mu.Unlock()
	return nil
}

// sandboxIP is a ready sandbox's IP, asked once per sandbox; invalid for
// a host-network pod.
func (s *Source) sandboxIP(ctx context.Context, id string) (netip.Addr, error) {
	s.mu.Lock()
	ip, ok := s.sandboxI[id]
	s.mu.Unlock()
	if ok {
		return ip, nil
	}
	st, err := s.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
	if status.Code(err) == codes.NotFound {
		return netip.Addr{}, nil // removed since the list
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("PodSandboxStatus: %w", err)
	}
	hostNet := st.GetStatus().GetLinux().GetNamespaces().GetOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE
	if a, err := netip.ParseAddr(st.GetStatus().GetNetwork().GetIp()); err == nil && !hostNet {
		ip = a.Unmap()
	}
	s.mu.Lock()
	s.sandboxI[id] = ip
	s.mu.Unlock()
	return ip, nil
}

func (s *Source) forgetSandboxes(seen map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.sandboxI {
		if !seen[id] {
			delete(s.sandboxI, id)
		}
	}
}

// imageTags maps image ids to their first repo tag (or digest).
func (s *Source) imageTags(ctx context.Context) (map[string]string, error) {
	imgs, err := s.images.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return nil, fmt.Errorf("ListImages: %w", err)
	}
	tags := make(map[string]string, len(imgs.Images))
	for _, im := range imgs.Images {
		switch {
		case len(im.RepoTags) > 0:
			tags[im.Id] = im.RepoTags[0]
		case len(im.RepoDigests) > 0:
			tags[im.Id] = im.RepoDigests[0]
		}
	}
	return tags, nil
}

// imageName is the container's image as its user named it, or else the
// id the runtime has (isName false): kubelet creates containers with the
// image's id and, since 1.30, the user's name beside it.
func imageName(c *runtimeapi.Container) (string, bool) {
	if u := c.GetImage().GetUserSpecifiedImage(); u != "" {
		return u, true
	}
	img := c.GetImage().GetImage()
	if img == "" {
		img = c.ImageRef
	}
	return img, !isImageID(img)
}

// isImageID: "sha256:<hex>" or bare hex, as opposed to a reference.
func isImageID(s string) bool {
	s = strings.TrimPrefix(s, "sha256:")
	if len(s) < 12 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Labels kubelet puts on every container.
const (
	labelPodName       = "io.kubernetes.pod.name"
	labelPodNamespace  = "io.kubernetes.pod.namespace"
	labelPodUID        = "io.kubernetes.pod.uid"
	labelContainerName = "io.kubernetes.container.name"
)

// podFromContainerLabels names the pod of a container whose sandbox is
// no longer listed, from the labels kubelet sets on each container (the
// pod's own labels are only on the sandbox).
func podFromContainerLabels(l map[string]string) metadata.Pod {
	p := metadata.Pod{Namespace: l[labelPodNamespace], Name: l[labelPodName], UID: l[labelPodUID]}
	if p.Name != "" {
		p.Workload = metadata.InferWorkload(p.Name, nil)
	}
	return p
}

// classify gives a failure its reason: gRPC folds a dial error into an
// Unavailable status, so the dial's own error tells a missing socket from
// a refused one.
func (s *Source) classify(err error) error {
	var me *metadata.Error
	if errors.As(err, &me) {
		return err
	}
	st, ok := status.FromError(errors.Unwrap(err))
	if !ok {
		st, _ = status.FromError(err)
	}
	reason := metadata.ReasonOther
	switch st.Code() {
	case codes.Unavailable:
		s.mu.Lock()
		dialErr := s.dialErr
		s.mu.Unlock()
		reason = metadata.ReasonUnavailable
		if dialErr != nil {
			if r := metadata.ReasonOf(dialErr); r == metadata.ReasonSocketMissing || r == metadata.ReasonPermissionDenied {
				reason = r
			}
		}
	case codes.DeadlineExceeded:
		reason = metadata.ReasonTimeout
	case codes.Canceled:
		reason = metadata.ReasonTimeout
	case codes.Unimplemented:
		reason = metadata.ReasonUnsupportedAPI
	case codes.ResourceExhausted:
		reason = metadata.ReasonBadResponse // an answer over maxMsgSize
	case codes.Internal:
		if strings.Contains(st.Message(), "unmarshal") {
			reason = metadata.ReasonBadResponse
		}
	}
	return &metadata.Error{Reason: reason, Err: err}
}
