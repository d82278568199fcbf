package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// tcpfsm version says what -ldflags -X set (make build, release, image),
// and what the toolchain recorded when nothing was set.
func TestVersionOutput(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no Go toolchain (the kernel VMs run prebuilt test binaries): the host's run checks this")
	}
	const pkg = "github.com/tcpfsm/tcpfsm/internal/buildinfo"
	const rev = "0123456789abcdef0123456789abcdef01234567"
	platform := runtime.GOOS + "/" + runtime.GOARCH
	cases := []struct {
		name    string
		ldflags string
		want    string
	}{
		{"ldflags", "-X " + pkg + ".version=v9.8.7-1-g0123456 -X " + pkg + ".revision=" + rev,
			"tcpfsm v9.8.7-1-g0123456 (revision " + rev + ", " + runtime.Version() + ", " + platform + ")\n"},
		{"plain go build", "",
			"tcpfsm (devel) (revision unknown, " + runtime.Version() + ", " + platform + ")\n"},
	}
	for _, c := range cases {
		bin := filepath.Join(t.TempDir(), "tcpfsm")
		build := exec.Command("go", "build", "-buildvcs=false", "-ldflags", c.ldflags, "-o", bin, ".")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("%s: go build: %v\n%s", c.name, err, out)
		}
		out, err := exec.Command(bin, "version").CombinedOutput()
		if err != nil || string(out) != c.want {
			t.Errorf("%s: tcpfsm version: %v, %q; want %q", c.name, err, out, c.want)
		}
	}
}
