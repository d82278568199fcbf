// Command image builds tcpfsm's multi-architecture OCI image from static
// binaries, with no registry and no container daemon, reproducibly: the
// same binaries, version and SOURCE_DATE_EPOCH give the same archive, byte
// for byte, and so the same index digest.
//
//	image build -o bin/tcpfsm-image.tar -name localhost/tcpfsm:v1 \
//	    -version v1 -revision $(git rev-parse HEAD) \
//	    -binary linux/amd64=bin/release/tcpfsm-linux-amd64 \
//	    -binary linux/arm64=bin/release/tcpfsm-linux-arm64
//	image digest bin/tcpfsm-image.tar
//
// `make image` runs it; see deploy/README.md for loading the archive.
package main

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type usageError struct{ error }

func run(args []string, stdout, stderr io.Writer) int {
	var err error
	switch {
	case len(args) > 0 && args[0] == "build":
		err = runBuild(args[1:], stdout)
	case len(args) > 0 && args[0] == "digest":
		err = runDigest(args[1:], stdout)
	default:
		err = usageError{errors.New("usage: image build FLAGS | image digest ARCHIVE")}
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "image: %v\n", err)
		return 2
	default:
		fmt.Fprintf(stderr, "image: %v\n", err)
		return 1
	}
}

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func runBuild(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("image build", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		s           spec
		names, bins listFlag
		out         = fs.String("o", "bin/tcpfsm-image.tar", "write the OCI archive to `FILE`")
		created     = fs.String("created", os.Getenv("SOURCE_DATE_EPOCH"), "creation time, Unix `SECONDS` (default $SOURCE_DATE_EPOCH)")
	)
	var licenseFiles listFlag
	fs.Var(&licenseFiles, "license-file", "put `FILE` in /"+docDir+" (repeatable)")
	fs.Var(&names, "name", "image `NAME:TAG` (repeatable)")
	fs.Var(&bins, "binary", "`OS/ARCH=FILE`, a static binary per platform (repeatable)")
	fs.StringVar(&s.Version, "version", "", "org.opencontainers.image.version")
	fs.StringVar(&s.Revision, "revision", "", "org.opencontainers.image.revision (the commit)")
	fs.StringVar(&s.Source, "source", "https://github.com/tcpfsm/tcpfsm", "org.opencontainers.image.source")
	// The Go code is Apache-2.0; the embedded BPF object is built from C
	// under GPL-2.0-only OR BSD-2-Clause (bpf/LICENSE.*).
	fs.StringVar(&s.Licenses, "licenses", "Apache-2.0 AND (GPL-2.0-only OR BSD-2-Clause)", "org.opencontainers.image.licenses (SPDX)")
	fs.StringVar(&s.Title, "title", "tcpfsm", "org.opencontainers.image.title")
	fs.StringVar(&s.Description, "description",
		"eBPF TCP connection-state tracer: Prometheus metrics and one JSON record per connection, as a host agent",
		"org.opencontainers.image.description")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("build: unexpected argument %q", fs.Arg(0))}
	}
	secs, err := strconv.ParseInt(*created, 10, 64)
	if err != nil || secs <= 0 {
		return usageError{fmt.Errorf("build: -created (or SOURCE_DATE_EPOCH) %q: want Unix seconds", *created)}
	}
	s.Created = time.Unix(secs, 0).UTC()
	s.Binaries = map[string]string{}
	for _, b := range bins {
		p, path, ok := strings.Cut(b, "=")
		if !ok || path == "" {
			return usageError{fmt.Errorf("build: -binary %q: want OS/ARCH=FILE", b)}
		}
		if _, err := parsePlatform(p); err != nil {
			return usageError{fmt.Errorf("build: -binary: %w", err)}
		}
		if _, dup := s.Binaries[p]; dup {
			return usageError{fmt.Errorf("build: -binary: %s twice", p)}
		}
		s.Binaries[p] = path
	}
	s.LicenseFiles = map[string][]byte{}
	for _, f := range licenseFiles {
		text, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if _, dup := s.LicenseFiles[filepath.Base(f)]; dup {
			return usageError{fmt.Errorf("build: -license-file: two files named %s", filepath.Base(f))}
		}
		s.LicenseFiles[filepath.Base(f)] = text
	}
	if err := s.check(); err != nil {
		return usageError{fmt.Errorf("build: %w", err)}
	}

	idx, err := buildIndex(s)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(*out, func(w io.Writer) error { return writeArchive(w, idx, names, s.Created) }); err != nil {
		return err
	}
	return describe(stdout, *out, idx, names)
}

// writeFileAtomic writes path through a temporary file beside it, so that
// a failed build leaves no half archive behind.
func writeFileAtomic(path string, write func(io.Writer) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".image-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func describe(w io.Writer, path string, idx *imageIndex, names []string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s: %s, %d bytes, index %s\n", path, strings.Join(names, " "), st.Size(), d)
	for _, m := range im.Manifests {
		img, err := idx.Image(m.Digest)
		if err != nil {
			return err
		}
		ls, err := img.Layers()
		if err != nil {
			return err
		}
		var compressed int64
		for _, l := range ls {
			n, err := l.Size()
			if err != nil {
				return err
			}
			compressed += n
		}
		fmt.Fprintf(w, "  %s/%s %s, layer %d bytes compressed\n", m.Platform.OS, m.Platform.Architecture, m.Digest, compressed)
	}
	return nil
}

// runDigest prints the digest of the image index an archive names.
func runDigest(args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return usageError{errors.New("usage: image digest ARCHIVE")}
	}
	d, err := archiveDigest(args[0])
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, d)
	return nil
}

// archiveDigest reads index.json out of an archive: the digest all of its
// entries name.
func archiveDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s: no index.json", path)
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		if hdr.Name != "index.json" {
			continue
		}
		var im v1.IndexManifest
		if err := json.NewDecoder(tr).Decode(&im); err != nil {
			return "", fmt.Errorf("%s: index.json: %w", path, err)
		}
		if len(im.Manifests) == 0 {
			return "", fmt.Errorf("%s: index.json names no image", path)
		}
		d := im.Manifests[0].Digest
		for _, m := range im.Manifests[1:] {
			if m.Digest != d {
				return "", fmt.Errorf("%s: index.json names %s and %s", path, d, m.Digest)
			}
		}
		return d.String(), nil
	}
}
