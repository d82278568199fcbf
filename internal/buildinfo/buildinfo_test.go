package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestGet(t *testing.T) {
	stamped := func() (*debug.BuildInfo, bool) {
		return &debug.BuildInfo{Main: debug.Module{Version: "v0.9.0"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "feedfacefeedfacefeedfacefeedfacefeedface"},
			{Key: "vcs.modified", Value: "false"},
		}}, true
	}
	modified := func() (*debug.BuildInfo, bool) {
		return &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "feedface"},
			{Key: "vcs.modified", Value: "true"},
		}}, true
	}
	bare := func() (*debug.BuildInfo, bool) { return &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, true }
	none := func() (*debug.BuildInfo, bool) { return nil, false }

	cases := []struct {
		name   string
		v, rev string
		read   func() (*debug.BuildInfo, bool)
		wantV  string
		wantR  string
	}{
		{"ldflags win over the toolchain's record", "v1.2.3-4-g0123abc", "0123abc0123abc", stamped, "v1.2.3-4-g0123abc", "0123abc0123abc"},
		{"go install pkg@v0.9.0", "", "", stamped, "v0.9.0", "feedfacefeedfacefeedfacefeedfacefeedface"},
		{"go build in a modified checkout", "", "", modified, "(devel)", "feedface-dirty"},
		{"go build -buildvcs=false", "", "", bare, "(devel)", "unknown"},
		{"only a version set", "v2.0.0", "", bare, "v2.0.0", "unknown"},
		{"no build info at all", "", "", none, "unknown", "unknown"},
	}
	for _, c := range cases {
		got := get(c.v, c.rev, c.read)
		want := Info{Version: c.wantV, Revision: c.wantR, GoVersion: runtime.Version()}
		if got != want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, want)
		}
	}
}

func TestString(t *testing.T) {
	i := Info{Version: "v1.2.3", Revision: "0123abc", GoVersion: "go1.26.8"}
	want := "tcpfsm v1.2.3 (revision 0123abc, go1.26.8, " + runtime.GOOS + "/" + runtime.GOARCH + ")"
	if got := i.String(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
