package metrics

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func procSys(t *testing.T, portRange, reserved string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "net", "ipv4")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ip_local_port_range"), []byte(portRange), 0o644); err != nil {
		t.Fatal(err)
	}
	if reserved != "-" {
		if err := os.WriteFile(filepath.Join(dir, "ip_local_reserved_ports"), []byte(reserved), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestEphemeralPorts(t *testing.T) {
	cases := []struct {
		portRange, reserved string
		want                int
	}{
		{"32768\t60999\n", "\n", 28232}, // the kernel's default
		{"32768\t60999\n", "-", 28232},  // no reserved ports file
		{"1024 65535\n", "\n", 64512},
		{"40000\t40009\n", "40002,40005-40006\n", 7},
		{"40000\t40009\n", "1000-40001,40009-50000\n", 7}, // reserved ranges overlap the edges
		{"40000\t40009\n", "80,443\n", 10},                // none inside
		{"5000\t5000\n", "\n", 1},
	}
	for _, c := range cases {
		got, err := EphemeralPorts(procSys(t, c.portRange, c.reserved))
		if err != nil || got != c.want {
			t.Errorf("range %q reserved %q: %d, %v; want %d", c.portRange, c.reserved, got, err, c.want)
		}
	}
	for _, bad := range [][2]string{{"60999 32768\n", "\n"}, {"32768\n", "\n"}, {"a b\n", "\n"}, {"1 70000\n", "\n"},
		{"32768 60999\n", "x\n"}, {"32768 60999\n", "50-40\n"}} {
		if n, err := EphemeralPorts(procSys(t, bad[0], bad[1])); err == nil {
			t.Errorf("range %q reserved %q: %d, want an error", bad[0], bad[1], n)
		}
	}
	if _, err := EphemeralPorts(t.TempDir()); err == nil {
		t.Error("no files: want an error")
	}
	// This machine's own value reads.
	if n, err := EphemeralPorts("/proc/sys"); err != nil || n < 1 || n > 65535 {
		t.Errorf("/proc/sys: %d, %v", n, err)
	}
}

// The gauge is exported when known, and only then.
func TestEphemeralPortsGauge(t *testing.T) {
	snap := fixedSnapshot()
	snap.EphemeralPorts = 28232
	m := New(Options{}, build, func() Snapshot { return snap })
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	want := `
# HELP tcpfsm_ephemeral_ports Local ports connect() picks from in the agent's network namespace: net.ipv4.ip_local_port_range less ip_local_reserved_ports.
# TYPE tcpfsm_ephemeral_ports gauge
tcpfsm_ephemeral_ports 28232
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tcpfsm_ephemeral_ports"); err != nil {
		t.Error(err)
	}
	m = New(Options{}, build, fixedSnapshot)
	reg = prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	if n, err := testutil.GatherAndCount(reg, "tcpfsm_ephemeral_ports"); err != nil || n != 0 {
		t.Errorf("unknown port range: %d series, %v; want none", n, err)
	}
}
