// Package buildinfo says which tcpfsm this is: the version, commit and Go
// version that `tcpfsm version` prints and tcpfsm_build_info carries.
//
// `make build`, `make release` and `make image` set the version and commit
// at link time from git describe and git rev-parse:
//
//	go build -ldflags "-X github.com/tcpfsm/tcpfsm/internal/buildinfo.version=v1.2.3 \
//	    -X github.com/tcpfsm/tcpfsm/internal/buildinfo.revision=0123abc..." ./cmd/tcpfsm
//
// A plain `go build` or `go install` falls back on what the Go toolchain
// recorded in the binary (debug.ReadBuildInfo): the module version
// (v1.2.3 for `go install ...@v1.2.3`, "(devel)" for a build in a
// checkout) and the VCS revision when -buildvcs stamped one.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Set with -ldflags -X; empty in builds that did not.
var (
	version  string
	revision string
)

// Info is one build's identity.
type Info struct {
	Version   string // git describe: v1.2.3, v1.2.3-4-g0123abc, 0123abc-dirty
	Revision  string // the full commit hash, "unknown" when nothing recorded it
	GoVersion string // runtime.Version(): go1.26.8
}

// Get returns this binary's Info.
func Get() Info {
	return get(version, revision, debug.ReadBuildInfo)
}

func get(v, rev string, read func() (*debug.BuildInfo, bool)) Info {
	info := Info{Version: v, Revision: rev, GoVersion: runtime.Version()}
	if info.Version != "" && info.Revision != "" {
		return info
	}
	if bi, ok := read(); ok {
		if info.Version == "" {
			info.Version = bi.Main.Version
		}
		if info.Revision == "" {
			info.Revision = setting(bi, "vcs.revision")
			if info.Revision != "" && setting(bi, "vcs.modified") == "true" {
				info.Revision += "-dirty"
			}
		}
	}
	if info.Version == "" {
		info.Version = "unknown"
	}
	if info.Revision == "" {
		info.Revision = "unknown"
	}
	return info
}

func setting(bi *debug.BuildInfo, key string) string {
	for _, s := range bi.Settings {
		if s.Key == key {
			return s.Value
		}
	}
	return ""
}

// String is what `tcpfsm version` prints:
//
//	tcpfsm v1.2.3 (revision 0123abc..., go1.26.8, linux/amd64)
func (i Info) String() string {
	return "tcpfsm " + i.Version + " (revision " + i.Revision + ", " + i.GoVersion + ", " + runtime.GOOS + "/" + runtime.GOARCH + ")"
}
