package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Where things are in the image. The binary's directory is on PATH, so
// `podman run IMAGE version` and a Kubernetes `command: [tcpfsm, ...]`
// both find it.
const (
	binaryPath  = "usr/local/bin/tcpfsm"
	docDir      = "usr/share/doc/tcpfsm"
	metricsPort = "9465/tcp"
)

// A user and group besides root, so that `--user 65532:65532` (the
// distroless "nonroot" id) names someone; nothing in the image is writable
// but /tmp, and nothing needs to be: the agent writes its log to stdout.
const (
	passwd = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" //nolint:gosec // G101: an /etc/passwd without passwords, not a credential
	group  = "root:x:0:\nnonroot:x:65532:\n"
)

// spec is what one image index is built from.
type spec struct {
	Version      string
	Revision     string
	Created      time.Time // the commit's time: SOURCE_DATE_EPOCH
	Source       string
	Licenses     string // SPDX expression
	Title        string
	Description  string
	LicenseFiles map[string][]byte // license texts by file name, put in /usr/share/doc/tcpfsm
	Binaries     map[string]string // "linux/amd64" -> path of a static binary
}

// annotations are the org.opencontainers.image.* keys, as labels of each
// image's config and annotations of its manifest and of the index.
func (s spec) annotations() map[string]string {
	return map[string]string{
		"org.opencontainers.image.created":     s.Created.UTC().Format(time.RFC3339),
		"org.opencontainers.image.version":     s.Version,
		"org.opencontainers.image.revision":    s.Revision,
		"org.opencontainers.image.source":      s.Source,
		"org.opencontainers.image.url":         s.Source,
		"org.opencontainers.image.licenses":    s.Licenses,
		"org.opencontainers.image.title":       s.Title,
		"org.opencontainers.image.description": s.Description,
	}
}

func (s spec) check() error {
	var missing []string
	for k, v := range map[string]string{"version": s.Version, "revision": s.Revision, "source": s.Source,
		"licenses": s.Licenses, "title": s.Title, "description": s.Description} {
		if strings.TrimSpace(v) == "" {
			missing = append(missing, k)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		return fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	if s.Created.IsZero() || s.Created.Unix() <= 0 {
		return fmt.Errorf("no creation time (SOURCE_DATE_EPOCH)")
	}
	if len(s.Binaries) == 0 {
		return fmt.Errorf("no binaries")
	}
	return nil
}

// platforms are the spec's platforms in a fixed order.
func (s spec) platforms() []string {
	ps := make([]string, 0, len(s.Binaries))
	for p := range s.Binaries {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// imageIndex is an OCI image index of one image per platform. It is
// written here rather than with mutate.AppendManifests, whose descriptors
// carry artifactType (the config's media type): the OCI spec keeps that
// field for artifacts, and tools that do not know it (skopeo 1.9) rewrite
// the index when they copy it, changing its digest.
type imageIndex struct {
	manifest v1.IndexManifest
	raw      []byte
	digest   v1.Hash
	images   map[v1.Hash]v1.Image
}

func (i *imageIndex) RawManifest() ([]byte, error)              { return i.raw, nil }
func (i *imageIndex) Digest() (v1.Hash, error)                  { return i.digest, nil }
func (i *imageIndex) IndexManifest() (*v1.IndexManifest, error) { return &i.manifest, nil }
func (i *imageIndex) Image(h v1.Hash) (v1.Image, error) {
	img, ok := i.images[h]
	if !ok {
		return nil, fmt.Errorf("index: no image %s", h)
	}
	return img, nil
}

// buildIndex builds one image per platform and the OCI index of them all.
func buildIndex(s spec) (*imageIndex, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	idx := &imageIndex{
		manifest: v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Annotations: s.annotations()},
		images:   map[v1.Hash]v1.Image{},
	}
	for _, p := range s.platforms() {
		img, plat, err := buildImage(s, p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		raw, err := img.RawManifest()
		if err != nil {
			return nil, err
		}
		d, err := img.Digest()
		if err != nil {
			return nil, err
		}
		idx.manifest.Manifests = append(idx.manifest.Manifests, v1.Descriptor{
			MediaType: types.OCIManifestSchema1, Size: int64(len(raw)), Digest: d, Platform: plat})
		idx.images[d] = img
	}
	raw, err := json.Marshal(idx.manifest)
	if err != nil {
		return nil, err
	}
	idx.raw = raw
	idx.digest, _, err = v1.SHA256(bytes.NewReader(raw))
	return idx, err
}

// parsePlatform reads "linux/amd64" or "linux/arm64/v8".
func parsePlatform(p string) (*v1.Platform, error) {
	parts := strings.Split(p, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] != "linux" || parts[1] == "" {
		return nil, fmt.Errorf("platform %q: want linux/ARCH", p)
	}
	plat := &v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		plat.Variant = parts[2]
	}
	return plat, nil
}

func buildImage(s spec, platform string) (v1.Image, *v1.Platform, error) {
	plat, err := parsePlatform(platform)
	if err != nil {
		return nil, nil, err
	}
	bin, err := os.ReadFile(s.Binaries[platform])
	if err != nil {
		return nil, nil, err
	}
	if err := checkStatic(bin, plat.Architecture); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", s.Binaries[platform], err)
	}
	files := []file{
		{name: binaryPath, mode: 0o755, data: bin},
		{name: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{name: "etc/group", mode: 0o644, data: []byte(group)},
		{name: "tmp", mode: 0o1777, dir: true},
	}
	docs := []string{}
	for name, text := range s.LicenseFiles {
		files = append(files, file{name: docDir + "/" + name, mode: 0o644, data: text})
		docs = append(docs, "/"+docDir+"/"+name)
	}
	sort.Strings(docs)
	raw, err := layerTar(files, s.Created)
	if err != nil {
		return nil, nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestCompression))
	if err != nil {
		return nil, nil, err
	}

	created := v1.Time{Time: s.Created.UTC()}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   created,
			CreatedBy: fmt.Sprintf("make image: tcpfsm %s (%s), static, %s", s.Version, s.Revision, platform),
			Comment:   strings.Join(append([]string{"/" + binaryPath, "/etc/passwd", "/etc/group", "/tmp"}, docs...), ", "),
		},
	})
	if err != nil {
		return nil, nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS, cfg.Variant = plat.Architecture, plat.OS, plat.Variant
	cfg.Created = created
	cfg.Author = ""
	cfg.Config = v1.Config{
		Entrypoint:   []string{"/" + binaryPath},
		Cmd:          []string{"agent"},
		Env:          []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		WorkingDir:   "/",
		ExposedPorts: map[string]struct{}{metricsPort: {}},
		StopSignal:   "SIGTERM",
		Labels:       s.annotations(),
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, nil, err
	}
	return mutate.Annotations(img, s.annotations()).(v1.Image), plat, nil
}
