package main

// deploy/systemd: the unit's directives and systemd-analyze verify.

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// ---- systemd ----

// unitDirectives reads a unit file: key -> every value given, in order.
func unitDirectives(t testing.TB, data []byte) map[string][]string {
	t.Helper()
	m := map[string][]string{}
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, "[") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("unit line %q", l)
		}
		m[k] = append(m[k], v)
	}
	return m
}

func TestDeploySystemdUnit(t *testing.T) {
	data := readDeploy(t, "systemd/tcpfsm-agent.service")
	d := unitDirectives(t, data)
	one := func(k string) string {
		if len(d[k]) != 1 {
			t.Errorf("%s: %q, want it once", k, d[k])
			return ""
		}
		return d[k][0]
	}
	if one("DynamicUser") != "yes" && one("User") == "" {
		t.Error("want DynamicUser=yes or a User=")
	}
	for _, k := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		if f := strings.Fields(one(k)); !slices.Equal(f, []string{"CAP_BPF", "CAP_PERFMON"}) {
			t.Errorf("%s=%v, want exactly CAP_BPF CAP_PERFMON", k, f)
		}
	}
	for k, v := range map[string]string{"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
		"PrivateTmp": "yes", "ProtectKernelModules": "yes", "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes"} {
		if got := one(k); got != v {
			t.Errorf("%s=%q, want %q", k, got, v)
		}
	}
	if f := strings.Fields(one("RestrictAddressFamilies")); !slices.Equal(slices.Sorted(slices.Values(f)),
		[]string{"AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"}) {
		t.Errorf("RestrictAddressFamilies=%v", f)
	}
	if len(d["SystemCallFilter"]) == 0 || one("MemoryMax") == "" {
		t.Error("want SystemCallFilter= and MemoryMax=")
	}
	// Capabilities in a user namespace of the service's own do not count
	// for bpf().
	if slices.Contains(d["PrivateUsers"], "yes") {
		t.Error("PrivateUsers=yes would make CAP_BPF useless")
	}
	// ExecStart is a valid agent command line (with the example
	// configuration where the unit expects it installed).
	exec := strings.Fields(one("ExecStart"))
	if len(exec) < 2 || exec[1] != "agent" {
		t.Fatalf("ExecStart=%v", exec)
	}
	args := exec[2:]
	for i, a := range args {
		if a == "/etc/tcpfsm/tcpfsm.yml" {
			args[i] = filepath.Join(deployDir, "tcpfsm.yml")
		}
	}
	if _, _, err := parseAgentConfig(args, nil); err != nil {
		t.Errorf("ExecStart's arguments: %v", err)
	}
	if !strings.Contains(strings.Join(exec, " "), "/var/log/tcpfsm/") || one("LogsDirectory") != "tcpfsm" {
		t.Error("the log goes to LogsDirectory=tcpfsm, /var/log/tcpfsm, the one writable place")
	}
}

// systemd-analyze: the unit verifies without a warning, and its exposure
// score stays in the "OK" band.
func TestDeploySystemdAnalyze(t *testing.T) {
	sa := needTool(t, "systemd-analyze", "systemd")
	data := readDeploy(t, "systemd/tcpfsm-agent.service")
	// verify wants ExecStart's binary to exist: point it at a built one.
	bin := buildBinary(t)
	dir := t.TempDir()
	unit := filepath.Join(dir, "tcpfsm-agent.service")
	if err := os.WriteFile(unit, bytes.ReplaceAll(data, []byte("/usr/local/bin/tcpfsm"), []byte(bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", unit).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err = exec.Command(sa, "security", "--offline=true", "--threshold=25", unit).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.5: %v\n%s", err, out)
	}
	if m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out); m != nil {
		t.Logf("exposure %s", m[1])
	}
}
