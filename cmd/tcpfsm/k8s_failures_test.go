package main

// The container runtime's failures as the agent meets them: a missing
// socket, a refused one, a CRI version tcpfsm does not speak.

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeCRI answers Version with an API version tcpfsm does not speak.
type fakeCRI struct {
	runtimeapi.UnimplementedRuntimeServiceServer
}

func (fakeCRI) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{RuntimeName: "fake", RuntimeVersion: "9", RuntimeApiVersion: "v2alpha1"}, nil
}

// The runtime's failures, each as an agent meets it: a warning once,
// counted by reason, and the agent carries on logging records with what
// it knows.
func TestAgentMetadataFailures(t *testing.T) {
	notInKernelVM(t)
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	for _, tc := range []struct {
		name   string
		reason string
		nobody bool
		listen func(t *testing.T, path string)
	}{
		{"socket missing", "socket_missing", false, func(*testing.T, string) {}},
		{"permission denied", "permission_denied", true, func(t *testing.T, path string) {
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			if err := os.Chmod(path, 0o600); err != nil { // root's alone
				t.Fatal(err)
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
		}},
		{"unknown API version", "unsupported_api", false, func(t *testing.T, path string) {
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer()
			runtimeapi.RegisterRuntimeServiceServer(srv, fakeCRI{})
			// Serve returns when Stop closes ln at the test's end.
			go func() { _ = srv.Serve(ln) }()
			t.Cleanup(srv.Stop)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := nettest.NewNS(t)
			uid := 0
			if tc.nobody {
				uid = 65534
			}
			dir, binCopy, logFile := publicDir(t, bin, uid)
			sock := filepath.Join(dir, "cri.sock")
			tc.listen(t, sock)
			o := agentOptions{args: append([]string{"--netns", strconv.FormatUint(uint64(ns.Inode), 10), "--log.file", logFile,
				"--cri.endpoint", sock, "--engine.endpoints", "none", "--metrics.labels", "namespace,container"}, small...)}
			if tc.nobody {
				o.sys = asNobody(unix.CAP_BPF, unix.CAP_PERFMON)
			}
			a := startAgent(t, binCopy, o)
			a.waitMetric(t, "failed lists counted", func(m map[string]*dto.MetricFamily) bool {
				return metricSum(m, "tcpfsm_metadata_errors_total", "reason", tc.reason) >= 2 &&
					metricSum(m, "tcpfsm_metadata_source_up", "runtime", "containerd") == 0
			})
			mfs, _ := a.scrape(t)
			if all := metricSum(mfs, "tcpfsm_metadata_errors_total"); all != metricSum(mfs, "tcpfsm_metadata_errors_total", "reason", tc.reason) {
				t.Errorf("errors of other reasons than %s: %v in all", tc.reason, all)
			}
			// It carries on: connections are logged and counted.
			ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
			done := nettest.Serve(t, ln, 100)
			ns.Graceful(t, ln.Addr().String(), 100)
			<-done
			a.waitMetric(t, "both ends closed", func(m map[string]*dto.MetricFamily) bool {
				return metricSum(m, "tcpfsm_connections_closed_total", "namespace", "", "container", "") >= 2
			})
			if code := a.stop(t); code != 0 {
				t.Fatalf("exit %d\n%s", code, a.stderr)
			}
			if n := len(readRecords(t, logFile)); n != 2 {
				t.Errorf("%d records logged, want both ends", n)
			}
			stderr := a.stderr.String()
			if n := strings.Count(stderr, "container metadata unavailable"); n != 1 || !strings.Contains(stderr, `"reason":"`+tc.reason+`"`) {
				t.Errorf("want one warning naming %s, got %d:\n%s", tc.reason, n, stderr)
			}
		})
	}
}
