package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"
)

// file is one regular file or directory of a layer.
type file struct {
	name string // relative, slash-separated, no leading "/"
	mode int64  // permission bits (and the sticky bit)
	data []byte // nil for a directory
	dir  bool
}

// layerTar is a reproducible tar of files: every parent directory has an
// entry of its own (mode 0755), entries are sorted by name, every entry is
// owned by 0:0 with no user or group names, and every time stamp is mtime
// (access and change times are left out). The same files and mtime give the
// same bytes, whoever builds them, wherever, whenever.
func layerTar(files []file, mtime time.Time) ([]byte, error) {
	entries := map[string]file{}
	for _, f := range files {
		name := strings.Trim(path.Clean(f.name), "/")
		if name == "" || name == "." || strings.HasPrefix(name, "../") {
			return nil, fmt.Errorf("layer: bad path %q", f.name)
		}
		if _, dup := entries[name]; dup {
			return nil, fmt.Errorf("layer: %q twice", name)
		}
		f.name = name
		entries[name] = f
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if e, ok := entries[dir]; ok {
				if !e.dir {
					return nil, fmt.Errorf("layer: %q is a file and a directory", dir)
				}
				continue
			}
			entries[dir] = file{name: dir, mode: 0o755, dir: true}
		}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime = mtime.UTC().Truncate(time.Second)
	for _, n := range names {
		f := entries[n]
		hdr := &tar.Header{
			Name:    f.name,
			Mode:    f.mode,
			ModTime: mtime,
			Format:  tar.FormatUSTAR,
		}
		if f.dir {
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		} else {
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(f.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
