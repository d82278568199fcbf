package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Two small static programs, one per architecture, stand in for tcpfsm.
var testBinaries map[string]string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "image-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		src := filepath.Join(dir, "hello")
		if err := os.MkdirAll(src, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for name, text := range map[string]string{
			"go.mod":  "module hello\n\ngo 1.22\n",
			"main.go": "package main\n\nfunc main() { println(\"hello\") }\n",
		} {
			if err := os.WriteFile(filepath.Join(src, name), []byte(text), 0o644); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		testBinaries = map[string]string{}
		for _, arch := range []string{"amd64", "arm64"} {
			out := filepath.Join(dir, "hello-"+arch)
			cmd := exec.Command("go", "build", "-trimpath", "-o", out, ".")
			cmd.Dir = src
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOFLAGS=-buildvcs=false")
			if b, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", arch, err, b)
				return 1
			}
			testBinaries["linux/"+arch] = out
		}
		return m.Run()
	}()
	os.Exit(code)
}

var created = time.Date(2026, 11, 30, 12, 34, 56, 0, time.UTC)

func testSpec() spec {
	return spec{
		Version: "v1.2.3-4-g0123abc", Revision: "0123abc0123abc0123abc0123abc0123abc0123a",
		Created: created, Source: "https://github.com/tcpfsm/tcpfsm", Licenses: "Apache-2.0",
		Title: "tcpfsm", Description: "test image", LicenseFiles: map[string][]byte{"LICENSE": []byte("license text\n"), "LICENSE.GPL-2.0": []byte("gpl\n")},
		Binaries: testBinaries,
	}
}

func buildArchive(t *testing.T, s spec, names ...string) []byte {
	t.Helper()
	idx, err := buildIndex(s)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := writeArchive(&buf, idx, names, s.Created); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type entry struct {
	hdr  *tar.Header
	data []byte
}

func readTar(t *testing.T, b []byte) ([]string, map[string]entry) {
	t.Helper()
	var names []string
	m := map[string]entry{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names, m
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		m[strings.TrimSuffix(hdr.Name, "/")] = entry{hdr, data}
	}
}

func decode(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v in %s", err, b)
	}
}

func sha(b []byte) string { s := sha256.Sum256(b); return "sha256:" + hex.EncodeToString(s[:]) }

// Two builds of the same inputs, at different times and from different
// working directories, are the same bytes.
func TestReproducible(t *testing.T) {
	a := buildArchive(t, testSpec(), "localhost/tcpfsm:v1")
	t.Chdir(t.TempDir())
	time.Sleep(1100 * time.Millisecond) // a time stamp taken from the clock would differ
	b := buildArchive(t, testSpec(), "localhost/tcpfsm:v1")
	if !bytes.Equal(a, b) {
		t.Fatalf("two builds differ: %s vs %s", sha(a), sha(b))
	}
	// And the digest moves with what went in.
	s := testSpec()
	s.Version = "v1.2.4"
	if c := buildArchive(t, s, "localhost/tcpfsm:v1"); bytes.Equal(a, c) {
		t.Fatal("another version gave the same archive")
	}
}

// The archive is an OCI layout whose every entry has fixed owners, modes
// and time, with one index of both platforms, the OCI labels and
// annotations, and a docker manifest.json consistent with it.
func TestArchive(t *testing.T) {
	s := testSpec()
	const name = "localhost/tcpfsm:v1.2.3-4-g0123abc"
	order, entries := readTar(t, buildArchive(t, s, name))

	if !sort.StringsAreSorted(order) {
		t.Errorf("entries not sorted: %v", order)
	}
	for n, e := range entries {
		h := e.hdr
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || !h.ModTime.Equal(created) {
			t.Errorf("%s: uid %d gid %d %q/%q mtime %v", n, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime)
		}
		if want := map[bool]int64{true: 0o755, false: 0o644}[h.Typeflag == tar.TypeDir]; h.Mode != want {
			t.Errorf("%s: mode %o, want %o", n, h.Mode, want)
		}
		if strings.HasPrefix(n, "blobs/sha256/") && sha(e.data) != "sha256:"+strings.TrimPrefix(n, "blobs/sha256/") {
			t.Errorf("%s: content digest %s", n, sha(e.data))
		}
	}
	if got := string(entries["oci-layout"].data); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout: %s", got)
	}
	blob := func(d v1.Hash) []byte {
		t.Helper()
		e, ok := entries["blobs/"+d.Algorithm+"/"+d.Hex]
		if !ok {
			t.Fatalf("no blob %s", d)
		}
		return e.data
	}

	var top v1.IndexManifest
	decode(t, entries["index.json"].data, &top)
	if len(top.Manifests) != 1 || top.Manifests[0].MediaType != "application/vnd.oci.image.index.v1+json" {
		t.Fatalf("index.json: %+v", top)
	}
	wantNames := map[string]string{"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}
	if got := top.Manifests[0].Annotations; !reflect.DeepEqual(got, wantNames) {
		t.Errorf("index.json annotations %v, want %v", got, wantNames)
	}

	wantAnn := map[string]string{
		"org.opencontainers.image.created":     "2026-11-30T12:34:56Z",
		"org.opencontainers.image.version":     "v1.2.3-4-g0123abc",
		"org.opencontainers.image.revision":    "0123abc0123abc0123abc0123abc0123abc0123a",
		"org.opencontainers.image.source":      "https://github.com/tcpfsm/tcpfsm",
		"org.opencontainers.image.url":         "https://github.com/tcpfsm/tcpfsm",
		"org.opencontainers.image.licenses":    "Apache-2.0",
		"org.opencontainers.image.title":       "tcpfsm",
		"org.opencontainers.image.description": "test image",
	}
	var idx v1.IndexManifest
	decode(t, blob(top.Manifests[0].Digest), &idx)
	if !reflect.DeepEqual(idx.Annotations, wantAnn) {
		t.Errorf("index annotations %v", idx.Annotations)
	}
	var platforms []string
	configs := map[string]string{} // config path -> arch
	for _, d := range idx.Manifests {
		arch := d.Platform.Architecture
		platforms = append(platforms, d.Platform.OS+"/"+arch)
		if d.MediaType != "application/vnd.oci.image.manifest.v1+json" || d.ArtifactType != "" {
			t.Errorf("%s: index entry %+v: want an image manifest, no artifactType", arch, d)
		}
		var m v1.Manifest
		decode(t, blob(d.Digest), &m)
		if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || m.Config.MediaType != "application/vnd.oci.image.config.v1+json" {
			t.Errorf("%s: media types %s, %s", arch, m.MediaType, m.Config.MediaType)
		}
		if !reflect.DeepEqual(m.Annotations, wantAnn) {
			t.Errorf("%s: manifest annotations %v", arch, m.Annotations)
		}
		var cfg v1.ConfigFile
		decode(t, blob(m.Config.Digest), &cfg)
		configs["blobs/sha256/"+m.Config.Digest.Hex] = arch
		if cfg.Architecture != arch || cfg.OS != "linux" || !cfg.Created.Equal(created) {
			t.Errorf("%s: config says %s/%s created %v", arch, cfg.OS, cfg.Architecture, cfg.Created)
		}
		c := cfg.Config
		if !reflect.DeepEqual(c.Entrypoint, []string{"/usr/local/bin/tcpfsm"}) || !reflect.DeepEqual(c.Cmd, []string{"agent"}) ||
			c.User != "" || !reflect.DeepEqual(c.Labels, wantAnn) || !reflect.DeepEqual(c.ExposedPorts, map[string]struct{}{"9465/tcp": {}}) {
			t.Errorf("%s: config %+v", arch, c)
		}
		if len(cfg.History) != 1 || !cfg.History[0].Created.Equal(created) {
			t.Errorf("%s: history %+v", arch, cfg.History)
		}
		if len(m.Layers) != 1 || m.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
			t.Fatalf("%s: layers %+v", arch, m.Layers)
		}
		layer := gunzip(t, blob(m.Layers[0].Digest))
		if got := sha(layer); len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0].String() != got {
			t.Errorf("%s: diff_ids %v, layer is %s", arch, cfg.RootFS.DiffIDs, got)
		}
		checkLayer(t, arch, layer)
	}
	if want := []string{"linux/amd64", "linux/arm64"}; !reflect.DeepEqual(platforms, want) {
		t.Errorf("platforms %v, want %v", platforms, want)
	}

	// docker's classic loader: every config and layer named exists, and
	// amd64 comes last (it keeps the tag).
	var dm []dockerManifest
	decode(t, entries["manifest.json"].data, &dm)
	var arches []string
	for _, m := range dm {
		arches = append(arches, configs[m.Config])
		if !reflect.DeepEqual(m.RepoTags, []string{name}) || len(m.Layers) != 1 {
			t.Errorf("manifest.json entry %+v", m)
		}
		if _, ok := entries[m.Layers[0]]; !ok {
			t.Errorf("manifest.json names missing layer %s", m.Layers[0])
		}
	}
	if want := []string{"arm64", "amd64"}; !reflect.DeepEqual(arches, want) {
		t.Errorf("manifest.json configs are for %v, want %v", arches, want)
	}
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkLayer: the files, their modes, owners and contents.
func checkLayer(t *testing.T, arch string, layer []byte) {
	t.Helper()
	order, entries := readTar(t, layer)
	want := []string{"etc/", "etc/group", "etc/passwd", "tmp/", "usr/", "usr/local/", "usr/local/bin/",
		"usr/local/bin/tcpfsm", "usr/share/", "usr/share/doc/", "usr/share/doc/tcpfsm/", "usr/share/doc/tcpfsm/LICENSE",
		"usr/share/doc/tcpfsm/LICENSE.GPL-2.0"}
	if !reflect.DeepEqual(order, want) {
		t.Errorf("%s: layer has %v, want %v", arch, order, want)
	}
	modes := map[string]int64{"tmp": 0o1777, "usr/local/bin/tcpfsm": 0o755, "etc/passwd": 0o644, "etc/group": 0o644,
		"usr/share/doc/tcpfsm/LICENSE": 0o644, "usr/share/doc/tcpfsm/LICENSE.GPL-2.0": 0o644, "usr/local/bin": 0o755}
	for n, m := range modes {
		if got := entries[n].hdr.Mode; got != m {
			t.Errorf("%s: %s mode %o, want %o", arch, n, got, m)
		}
	}
	for n, e := range entries {
		if e.hdr.Uid != 0 || e.hdr.Gid != 0 || !e.hdr.ModTime.Equal(created) || !e.hdr.AccessTime.IsZero() {
			t.Errorf("%s: %s owned %d:%d, times %v %v", arch, n, e.hdr.Uid, e.hdr.Gid, e.hdr.ModTime, e.hdr.AccessTime)
		}
	}
	bin, _ := os.ReadFile(testBinaries["linux/"+arch])
	if !bytes.Equal(entries["usr/local/bin/tcpfsm"].data, bin) {
		t.Errorf("%s: the binary in the layer is not the one given", arch)
	}
	if got := string(entries["etc/passwd"].data); !strings.Contains(got, "nonroot:x:65532:65532:") {
		t.Errorf("%s: /etc/passwd %q", arch, got)
	}
}

// What cannot make a working image is refused, with a usage error (2)
// for a bad command line.
func TestBadInput(t *testing.T) {
	amd, arm := testBinaries["linux/amd64"], testBinaries["linux/arm64"]
	base := []string{"build", "-o", filepath.Join(t.TempDir(), "x.tar"), "-name", "localhost/tcpfsm:v1",
		"-version", "v1", "-revision", "abc", "-created", "1700000000"}
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"build", "-created", "1", "-binary", "linux/amd64=" + amd}, 2, "missing revision, version"},
		{append(base[:len(base)-2:len(base)-2], "-binary", "linux/amd64="+amd), 2, "SOURCE_DATE_EPOCH"},
		{append(base, "-binary", "linux/amd64="+arm), 1, "built for EM_AARCH64, not amd64"},
		{append(base, "-binary", "linux/riscv64="+amd), 1, `unsupported architecture "riscv64"`},
		{append(base, "-binary", "windows/amd64="+amd), 2, "want linux/ARCH"},
		{append(base, "-binary", "linux/amd64"), 2, "want OS/ARCH=FILE"},
		{append(base, "-binary", "linux/amd64="+amd, "-binary", "linux/amd64="+amd), 2, "linux/amd64 twice"},
		{append(base, "-binary", "linux/amd64=/etc/passwd"), 1, "not an ELF binary"},
		{base, 2, "no binaries"},
		{[]string{"build", "-o", filepath.Join(t.TempDir(), "x.tar"), "-name", "localhost/tcpfsm", "-version", "v1",
			"-revision", "abc", "-created", "1700000000", "-binary", "linux/amd64=" + amd}, 1, "has no tag"},
		{[]string{"digest"}, 2, "usage"},
		{[]string{}, 2, "usage"},
	}
	// A dynamically linked binary, where the host has one.
	if dyn, err := exec.LookPath("ls"); err == nil && isDynamic(dyn) {
		cases = append(cases, struct {
			args []string
			code int
			want string
		}{append(base, "-binary", "linux/amd64="+dyn), 1, "CGO_ENABLED=0"})
	}
	t.Setenv("SOURCE_DATE_EPOCH", "")
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := run(c.args, &out, &errb)
		if code != c.code || !strings.Contains(errb.String(), c.want) || strings.Count(errb.String(), "\n") != 1 {
			t.Errorf("image %v: exit %d, stderr %q; want exit %d and one line with %q", c.args, code, errb.String(), c.code, c.want)
		}
	}
}

func isDynamic(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && checkStatic(b, "amd64") != nil && bytes.HasPrefix(b, []byte("\x7fELF"))
}

// The command writes the archive and `image digest` reads the digest back.
func TestBuildCommand(t *testing.T) {
	out := filepath.Join(t.TempDir(), "img.tar")
	args := []string{"build", "-o", out, "-name", "localhost/tcpfsm:v1", "-version", "v1", "-revision", "abc",
		"-license-file", "../../LICENSE", "-license-file", "../../bpf/LICENSE.GPL-2.0",
		"-binary", "linux/arm64=" + testBinaries["linux/arm64"], "-binary", "linux/amd64=" + testBinaries["linux/amd64"]}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	var stdout, stderr bytes.Buffer
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var dout bytes.Buffer
	if code := run([]string{"digest", out}, &dout, &stderr); code != 0 {
		t.Fatalf("digest: exit %d: %s", code, stderr.String())
	}
	d := strings.TrimSpace(dout.String())
	if !strings.HasPrefix(d, "sha256:") || !strings.Contains(stdout.String(), "index "+d+"\n") ||
		!strings.Contains(stdout.String(), "  linux/amd64 sha256:") || !strings.Contains(stdout.String(), "  linux/arm64 sha256:") {
		t.Errorf("digest %q; build said:\n%s", d, stdout.String())
	}
	st, err := os.Stat(out)
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("archive: %v %v", st, err)
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".image-*")); len(m) > 0 {
		t.Errorf("temporary files left: %v", m)
	}
}

// The DaemonSet runs the image `make image` builds by default.
func TestDaemonSetNamesTheImage(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	ds, err := os.ReadFile("../../deploy/kubernetes/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	def := regexp.MustCompile(`(?m)^IMAGE \?= (\S+)$`).FindSubmatch(mk)
	refs := regexp.MustCompile(`(?m)^\s+image: (\S+)$`).FindAllSubmatch(ds, -1)
	if def == nil || len(refs) != 1 {
		t.Fatalf("Makefile IMAGE default %q, DaemonSet image lines %q", def, refs)
	}
	if string(refs[0][1]) != string(def[1]) {
		t.Errorf("the DaemonSet runs %s, make image builds %s", refs[0][1], def[1])
	}
}
