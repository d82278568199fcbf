package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// dockerManifest is one entry of manifest.json, the file docker's classic
// image store loads from (`docker load` without the containerd store reads
// nothing else; with it, and for podman and containerd, index.json rules).
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// writeArchive writes the index as an OCI image layout in a tar (what
// `podman load`, `ctr images import` and `skopeo copy oci-archive:` read)
// with a docker manifest.json beside index.json, so that `docker load`
// reads it with either image store. Each name gets an index.json entry
// carrying it as io.containerd.image.name (containerd, docker's containerd
// store) and org.opencontainers.image.ref.name (podman, skopeo).
//
// Entries are sorted and carry fixed owners, modes and mtime, so the same
// index gives the same bytes.
func writeArchive(w io.Writer, idx *imageIndex, names []string, mtime time.Time) error {
	if len(names) == 0 {
		return fmt.Errorf("archive: no image name")
	}
	blobs := map[string][]byte{} // "blobs/sha256/<hex>" -> content
	put := func(h v1.Hash, b []byte) string {
		p := "blobs/" + h.Algorithm + "/" + h.Hex
		blobs[p] = b
		return p
	}

	rawIndex, err := idx.RawManifest()
	if err != nil {
		return err
	}
	idxDigest, err := idx.Digest()
	if err != nil {
		return err
	}
	put(idxDigest, rawIndex)
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}

	// docker's classic store keeps one image per tag: it loads every entry
	// of manifest.json, and the last one keeps the tags. amd64 goes last,
	// so a plain `docker load` there tags the amd64 image;
	// `docker load --platform linux/arm64` loads only the arm64 one.
	manifests := append([]v1.Descriptor(nil), im.Manifests...)
	sort.SliceStable(manifests, func(i, j int) bool {
		return manifests[i].Platform.Architecture != "amd64" && manifests[j].Platform.Architecture == "amd64"
	})
	var docker []dockerManifest
	for _, d := range manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			return err
		}
		raw, err := img.RawManifest()
		if err != nil {
			return err
		}
		put(d.Digest, raw)
		rawCfg, err := img.RawConfigFile()
		if err != nil {
			return err
		}
		cfgName, err := img.ConfigName()
		if err != nil {
			return err
		}
		dm := dockerManifest{Config: put(cfgName, rawCfg), RepoTags: names}
		layers, err := img.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			h, err := l.Digest()
			if err != nil {
				return err
			}
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				return err
			}
			dm.Layers = append(dm.Layers, put(h, b))
		}
		docker = append(docker, dm)
	}

	top := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	for _, n := range names {
		tag := n[strings.LastIndex(n, ":")+1:]
		if !strings.Contains(n, ":") || strings.Contains(tag, "/") {
			return fmt.Errorf("archive: image name %q has no tag", n)
		}
		top.Manifests = append(top.Manifests, v1.Descriptor{
			MediaType: types.OCIImageIndex,
			Digest:    idxDigest,
			Size:      int64(len(rawIndex)),
			Annotations: map[string]string{
				"io.containerd.image.name":          n,
				"org.opencontainers.image.ref.name": n,
			},
		})
	}
	indexJSON, err := json.Marshal(top)
	if err != nil {
		return err
	}
	manifestJSON, err := json.Marshal(docker)
	if err != nil {
		return err
	}

	files := []file{
		{name: "oci-layout", mode: 0o644, data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{name: "index.json", mode: 0o644, data: indexJSON},
		{name: "manifest.json", mode: 0o644, data: manifestJSON},
	}
	for p, b := range blobs {
		files = append(files, file{name: p, mode: 0o644, data: b})
	}
	raw, err := layerTar(files, mtime)
	if err != nil {
		return err
	}
	_, err = w.Write(raw)
	return err
}
