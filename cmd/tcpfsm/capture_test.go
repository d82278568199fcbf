package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/internal/testkit/scenario"
)

// TestCaptureScenarios re-captures tracer/testdata/scenarios/*.rec with
// `tcpfsm record`, one recording per scenario, each in a fresh network
// namespace. It runs only when TCPFSM_CAPTURE names the output directory
// (make recordings); the replay tests then check the recordings.
func TestCaptureScenarios(t *testing.T) {
	dir := os.Getenv("TCPFSM_CAPTURE")
	if dir == "" {
		t.Skip("set TCPFSM_CAPTURE=DIR (make recordings) to re-capture the scenario recordings")
	}
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	for _, sc := range scenario.All() {
		t.Run(sc.Name, func(t *testing.T) {
			t.Parallel()
			ns := nettest.NewNS(t)
			var before any
			if sc.Before != nil {
				before = sc.Before(t, ns)
			}
			path := filepath.Join(dir, sc.Name+".rec")
			cmd, _, stderr := startTracer(t, bin, "record", "-w", path, "--netns", ns.Path())
			sc.Run(t, ns, before)
			// Long enough for the reset hold and a TIME_WAIT poll; the
			// first scenario also keeps its TIME_WAIT to the end.
			wait := 2 * time.Second
			if sc.Name == "client-closes-first" {
				wait = 63 * time.Second
			}
			time.Sleep(wait)
			if err := cmd.Process.Signal(os.Interrupt); err != nil {
				t.Fatal(err)
			}
			waitExit(t, cmd)
			t.Logf("%s: %s", sc.Name, stderr.String())
		})
	}
}
