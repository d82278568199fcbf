package main

// The files in deploy/, checked without privileges, one subject a file:
// the Prometheus configuration and rules here (promtool, the shape every
// alert must have), deploy_dashboard_test.go (Grafana),
// deploy_daemonset_test.go (Kubernetes), deploy_systemd_test.go and
// deploy_syscalls_test.go (systemd). The queries themselves run against a
// live agent in agent_prometheus_test.go.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"go.yaml.in/yaml/v3"
)

const deployDir = "../../deploy"

// inKernelVM reports whether the tests run in the 6.1 kernel VM of
// .ci/kernels (its /init names the machine so): a busybox userland with
// only the test binaries and testdata, no deploy/ and no Debian tools.
func inKernelVM() bool { return nettest.InKernelVM() }

// unavailable skips a test that lacks a tool or file, except in CI on the
// host, where everything it needs is installed (.ci/run) and a missing
// piece is a failure.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if nettest.InCI() && !inKernelVM() {
		t.Fatalf("CI=true: %s", msg)
	}
	t.Skip(msg)
}

// needTool returns the path of a command, or skips (fails in CI).
func needTool(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		unavailable(t, "needs %s (Debian package %s)", name, pkg)
	}
	return path
}

// deployFile returns the path of a file under deploy/, or skips (fails in
// CI) where deploy/ is not there (the kernel VM).
func deployFile(t testing.TB, rel string) string {
	t.Helper()
	p := filepath.Join(deployDir, rel)
	if _, err := os.Stat(p); err != nil {
		if inKernelVM() {
			t.Skipf("no deploy/ in the kernel VM: %v", err)
		}
		t.Fatal(err)
	}
	return p
}

func readDeploy(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(deployFile(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ---- Prometheus ----

func TestDeployPromtoolRules(t *testing.T) {
	promtool := needTool(t, "promtool", "prometheus")
	rules := deployFile(t, "prometheus/rules.yml")
	out, err := exec.Command(promtool, "check", "rules", rules).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "SUCCESS") {
		t.Errorf("promtool check rules: %s", out)
	}
}

func TestDeployPromtoolConfig(t *testing.T) {
	promtool := needTool(t, "promtool", "prometheus")
	cfg := deployFile(t, "prometheus/prometheus.yml")
	out, err := exec.Command(promtool, "check", "config", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	// The rule file resolves, relative to the configuration.
	if !strings.Contains(string(out), "SUCCESS: 1 rule files found") || !strings.Contains(string(out), "rules.yml") {
		t.Errorf("promtool check config does not check rules.yml:\n%s", out)
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadRules(t testing.TB) []rule {
	t.Helper()
	var f ruleFile
	dec := yaml.NewDecoder(bytes.NewReader(readDeploy(t, "prometheus/rules.yml")))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		t.Fatal(err)
	}
	var rules []rule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

// alertShape is "<recording rule> <op> <number>".
var alertShape = regexp.MustCompile(`^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(==|!=|>=|<=|>|<)\s*(-?[0-9]+(?:\.[0-9]+)?(?:[eE]-?[0-9]+)?)\s*$`)

// alertLHS returns the recording rule an alert compares.
func alertLHS(expr string) (string, bool) {
	m := alertShape.FindStringSubmatch(expr)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// Every alert compares one recording rule of the file with a number, and
// has a duration, a severity and both annotations; recording rules are
// named level:metric:operations.
func TestDeployRulesShape(t *testing.T) {
	rules := loadRules(t)
	records := map[string]bool{}
	var alerts []rule
	for _, r := range rules {
		switch {
		case r.Record != "":
			if strings.Count(r.Record, ":") != 2 {
				t.Errorf("record %s: want level:metric:operations", r.Record)
			}
			records[r.Record] = true
		case r.Alert != "":
			alerts = append(alerts, r)
		}
	}
	for _, a := range alerts {
		lhs, ok := alertLHS(a.Expr)
		if !ok {
			t.Errorf("alert %s: expr %q is not <recording rule> <op> <number>", a.Alert, a.Expr)
		} else if !records[lhs] {
			t.Errorf("alert %s: %s is no recording rule of the file", a.Alert, lhs)
		}
		if a.For == "" {
			t.Errorf("alert %s: no for: duration", a.Alert)
		}
		if s := a.Labels["severity"]; !slices.Contains([]string{"info", "warning", "critical"}, s) {
			t.Errorf("alert %s: severity %q", a.Alert, s)
		}
		if a.Annotations["summary"] == "" || a.Annotations["description"] == "" {
			t.Errorf("alert %s: wants summary and description annotations", a.Alert)
		}
	}
	// The alerts the deployment promises.
	want := map[string]string{
		"TcpfsmCloseWaitPileUp":         `tcpfsm_connections{state="close_wait"}`,
		"TcpfsmCloseWaitStuck":          `tcpfsm_connections_stuck{state="close_wait"}`,
		"TcpfsmHandshakesStuck":         `tcpfsm_connections_stuck{state=~"syn_sent|syn_recv"}`,
		"TcpfsmConnectFailureRatioHigh": "tcpfsm_connect_failures_total",
		"TcpfsmEventsLost":              "tcpfsm_events_lost_total",
		"TcpfsmLogRecordsDropped":       "tcpfsm_log_records_dropped_total",
		"TcpfsmTimeWaitPortExhaustion":  `tcpfsm_connections{state="time_wait"}`,
	}
	byRecord := map[string]string{}
	for _, r := range rules {
		if r.Record != "" {
			byRecord[r.Record] = r.Expr
		}
	}
	// expand replaces the recording rules an expression uses by their
	// expressions, to see which metrics an alert rests on.
	var expand func(string, int) string
	expand = func(e string, depth int) string {
		if depth > 5 {
			return e
		}
		for name, x := range byRecord {
			if strings.Contains(e, name) {
				e += " " + expand(x, depth+1)
			}
		}
		return e
	}
	for name, metric := range want {
		found := false
		for _, a := range alerts {
			if a.Alert == name {
				found = true
				if !strings.Contains(expand(a.Expr, 0), metric) {
					t.Errorf("alert %s does not rest on %s", name, metric)
				}
			}
		}
		if !found {
			t.Errorf("no alert %s", name)
		}
	}
	// The CLOSE_WAIT alerts send the user to what lists those connections.
	for _, a := range alerts {
		if strings.HasPrefix(a.Alert, "TcpfsmCloseWait") {
			d := a.Annotations["description"]
			if !strings.Contains(d, "tcpfsm top") || !strings.Contains(d, "/api/v1/connections?state=close_wait") {
				t.Errorf("alert %s: the description does not point at tcpfsm top and the connections API: %q", a.Alert, d)
			}
		}
	}
	// The TIME_WAIT ratio documents and uses the default range's size.
	if e := byRecord["instance:tcpfsm_ephemeral_ports:max"]; !strings.Contains(e, "28232") || !strings.Contains(e, "tcpfsm_ephemeral_ports") {
		t.Errorf("instance:tcpfsm_ephemeral_ports:max: %q", e)
	}
}
