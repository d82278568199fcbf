// Package ociimage writes OCI image archives by hand, for tests that run
// real container runtimes on machines without a registry: one layer of
// the files given, a config with the entrypoint, a manifest and an index
// naming the image (containerd's ctr import and podman load read them).
package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"
)

// File is one file of the layer: its contents come from Src (a path on
// this machine) or Data.
type File struct {
	Path string // in the image, relative ("bin/busybox")
	Mode int64  // 0755
	Src  string
	Data []byte
	// Link makes a symbolic link to this target instead of a file.
	Link string
}

// Image describes the image.
type Image struct {
	// Name is the full reference, "localhost/tcpfsm/busybox:1".
	Name       string
	Files      []File
	Entrypoint []string
	Cmd        []string
}

// Busybox is an image with busybox-static's /bin/busybox as bin/busybox
// and bin/sh, running cmd (default: sleep for a day).
func Busybox(name string, cmd ...string) Image {
	if len(cmd) == 0 {
		cmd = []string{"/bin/busybox", "sleep", "86400"}
	}
	return Image{
		Name: name,
		Files: []File{
			{Path: "bin/busybox", Mode: 0o755, Src: "/bin/busybox"},
			{Path: "bin/sh", Link: "busybox"},
		},
		Entrypoint: cmd,
	}
}

// Written is what Write made: the archive and the digests a runtime
// shows.
type Written struct {
	Path     string
	ConfigID string // "sha256:<hex>": the image id CRI's ListImages reports
	Manifest string // "sha256:<hex>"
}

// Write writes img as an OCI archive (a tar of oci-layout, index.json
// and blobs/sha256/*) at path.
func Write(path string, img Image) (Written, error) {
	layer, err := layerTar(img.Files)
	if err != nil {
		return Written{}, err
	}
	layerDigest := digest(layer)
	config, _ := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      time.Unix(0, 0).UTC().Format(time.RFC3339),
		"config":       map[string]any{"Entrypoint": img.Entrypoint, "Cmd": img.Cmd, "Env": []string{"PATH=/bin"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", config),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar", layer)},
	})
	tag := img.Name
	if i := strings.LastIndexByte(tag, ':'); i > strings.LastIndexByte(tag, '/') {
		tag = tag[i+1:]
	}
	md := descriptor("application/vnd.oci.image.manifest.v1+json", manifest)
	md["annotations"] = map[string]string{
		"io.containerd.image.name":          img.Name, // ctr import
		"org.opencontainers.image.ref.name": tag,
	}
	md["platform"] = map[string]string{"architecture": runtime.GOARCH, "os": "linux"}
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []any{md},
	})

	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)}); err != nil {
			return Written{}, err
		}
	}
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blob(layer), layer},
		{blob(config), config},
		{blob(manifest), manifest},
	} {
		if err := add(f.name, f.data); err != nil {
			return Written{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return Written{}, err
	}
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		return Written{}, err
	}
	return Written{Path: path, ConfigID: digest(config), Manifest: digest(manifest)}, nil
}

func digest(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

func blob(b []byte) string { return "blobs/sha256/" + strings.TrimPrefix(digest(b), "sha256:") }

func descriptor(mediaType string, b []byte) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": digest(b), "size": len(b)}
}

// layerTar is an uncompressed layer of the files and their parent
// directories.
func layerTar(files []File) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	sorted := append([]File(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	for _, f := range sorted {
		for d := path.Dir(f.Path); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var dl []string
	for d := range dirs {
		dl = append(dl, d)
	}
	sort.Strings(dl)
	epoch := time.Unix(0, 0)
	for _, d := range dl {
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o755, Typeflag: tar.TypeDir, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	for _, f := range sorted {
		if f.Link != "" {
			if err := tw.WriteHeader(&tar.Header{Name: f.Path, Linkname: f.Link, Mode: 0o777, Typeflag: tar.TypeSymlink, ModTime: epoch}); err != nil {
				return nil, err
			}
			continue
		}
		data := f.Data
		if f.Src != "" {
			var err error
			if data, err = os.ReadFile(f.Src); err != nil {
				return nil, fmt.Errorf("image file %s: %w", f.Path, err)
			}
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := tw.WriteHeader(&tar.Header{Name: f.Path, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
