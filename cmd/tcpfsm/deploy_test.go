package main

// The files in deploy/, checked without privileges: promtool on the
// Prometheus configuration and rules, the shape every alert must have,
// the Grafana dashboard's panels and queries, the DaemonSet's security
// context and probes, the systemd unit (systemd-analyze). The queries
// themselves run against a live agent in agent_privileged_test.go.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/tcpfsm/tcpfsm/exporter/metrics"
	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/metadata/cri"
)

const deployDir = "../../deploy"

// inKernelVM reports whether the tests run in the 6.1 kernel VM of
// .ci/kernels (its /init names the machine so): a busybox userland with
// only the test binaries and testdata, no deploy/ and no Debian tools.
func inKernelVM() bool {
	h, _ := os.Hostname()
	return h == "tcpfsm-vm"
}

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

// ---- Grafana ----

type dashboard struct {
	SchemaVersion int              `json:"schemaVersion"`
	Title         string           `json:"title"`
	UID           string           `json:"uid"`
	Panels        []dashboardPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Inputs []struct {
		Name string `json:"name"`
	} `json:"__inputs"`
}

type dashboardPanel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *struct{ UID string }    `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Panels     []dashboardPanel         `json:"panels"`
	Targets    []struct {
		Expr   string `json:"expr"`
		RefID  string `json:"refId"`
		Format string `json:"format"`
	} `json:"targets"`
}

func loadDashboard(t testing.TB) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readDeploy(t, "grafana/dashboard.json"), &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// allPanels flattens rows.
func (d *dashboard) allPanels() []dashboardPanel {
	var out []dashboardPanel
	var walk func([]dashboardPanel)
	walk = func(ps []dashboardPanel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// dashboardExprs lists every target's expression, by panel title.
func dashboardExprs(d *dashboard) map[string][]string {
	m := map[string][]string{}
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			m[p.Title] = append(m[p.Title], tg.Expr)
		}
	}
	return m
}

// grafanaVars substitutes the dashboard's variables with values a test
// can query Prometheus with.
// Like Grafana, a variable inside a regex matcher is regex-escaped, and the
// escapes doubled for PromQL's double-quoted strings.
// The namespace and workload variables are All (".*"), or what
// grafanaVarsK8s is given.
func grafanaVars(expr, instance, rateInterval string) string {
	return grafanaVarsK8s(expr, instance, rateInterval, "", "")
}

func grafanaVarsK8s(expr, instance, rateInterval, namespace, workload string) string {
	quote := func(v string) string {
		if v == "" {
			return ".*"
		}
		return strings.ReplaceAll(regexp.QuoteMeta(v), `\`, `\\`)
	}
	re := quote(instance)
	ns, wl := quote(namespace), quote(workload)
	r := strings.NewReplacer(
		"$__rate_interval", rateInterval, "${__rate_interval}", rateInterval,
		"$__interval", "15s", "${__interval}", "15s",
		"$__range", "5m", "${__range}", "5m",
		"${instance:regex}", re, "${instance}", re, "$instance", re,
		"${namespace:regex}", ns, "${namespace}", ns, "$namespace", ns,
		"${workload:regex}", wl, "${workload}", wl, "$workload", wl,
	)
	return r.Replace(expr)
}

func TestDeployDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Errorf("schemaVersion %d, want about 39", d.SchemaVersion)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q uid %q", d.Title, d.UID)
	}
	// The data source is a variable (or an import input).
	dsVar := ""
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = v.Name
		}
	}
	for _, in := range d.Inputs {
		if in.Name == "DS_PROMETHEUS" {
			dsVar = in.Name
		}
	}
	if dsVar == "" {
		t.Fatal("no Prometheus data source variable or DS_PROMETHEUS input")
	}
	ids := map[int]bool{}
	for _, p := range d.allPanels() {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W == 0 || p.GridPos.H == 0 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${"+dsVar+"}" {
			t.Errorf("panel %q: datasource %+v, want ${%s}", p.Title, p.Datasource, dsVar)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no targets", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q target %s: no PromQL expr", p.Title, tg.RefID)
			}
			if left := grafanaVars(tg.Expr, "x", "1m"); strings.Contains(left, "$") {
				t.Errorf("panel %q: variable the tests do not know in %q", p.Title, tg.Expr)
			}
		}
	}
	// The panels the deployment promises, found by what they query.
	all := d.allPanels()
	has := func(what string, match func(p dashboardPanel, expr string) bool) {
		for _, p := range all {
			for _, tg := range p.Targets {
				if match(p, tg.Expr) {
					return
				}
			}
		}
		t.Errorf("no panel for %s", what)
	}
	has("a handshake latency heatmap", func(p dashboardPanel, e string) bool {
		return p.Type == "heatmap" && strings.Contains(e, "tcpfsm_handshake_duration_seconds_bucket") && strings.Contains(e, "le")
	})
	has("connection lifetimes", func(p dashboardPanel, e string) bool {
		return strings.Contains(e, "tcpfsm_connection_duration_seconds_bucket")
	})
	has("transitions by from and to", func(p dashboardPanel, e string) bool {
		return strings.Contains(e, "tcpfsm_state_transitions_total") && regexp.MustCompile(`by \((from, to|to, from)\)`).MatchString(e)
	})
	has("closes by kind", func(p dashboardPanel, e string) bool {
		return strings.Contains(e, "tcpfsm_connections_closed_total") && strings.Contains(e, "by (kind)")
	})
	has("connections by state", func(p dashboardPanel, e string) bool {
		return strings.Contains(e, "tcpfsm_connections{") && strings.Contains(e, "by (state)")
	})
	has("events lost", func(p dashboardPanel, e string) bool { return strings.Contains(e, "tcpfsm_events_lost_total") })
	has("TIME_WAIT", func(p dashboardPanel, e string) bool { return strings.Contains(e, `state="time_wait"`) })
	has("stuck connections by state", func(p dashboardPanel, e string) bool {
		return strings.Contains(e, "tcpfsm_connections_stuck{") && strings.Contains(e, "by (state)")
	})
	has("the oldest connection in each state", func(p dashboardPanel, e string) bool {
		return strings.Contains(e, "tcpfsm_oldest_connection_age_seconds{") && strings.Contains(e, "by (state)")
	})
	has("connect failures", func(p dashboardPanel, e string) bool {
		return strings.Contains(e, "tcpfsm_connect_failures_total") && strings.Contains(e, "by (reason)")
	})
	has("connect failures by workload", func(p dashboardPanel, e string) bool {
		return strings.Contains(e, "tcpfsm_connect_failures_total") && strings.Contains(e, "by (namespace, workload, reason)")
	})
	has("connections opened by workload", func(p dashboardPanel, e string) bool {
		return strings.Contains(e, "tcpfsm_connections_opened_total") && strings.Contains(e, "by (namespace, workload)")
	})
	// Namespace and workload variables, and every query of a metric that
	// has those labels selects by them.
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	if !vars["namespace"] || !vars["workload"] {
		t.Errorf("no namespace and workload variables: %v", vars)
	}
	for _, p := range all {
		for _, tg := range p.Targets {
			for _, m := range []string{"tcpfsm_connections_opened_total", "tcpfsm_connections_closed_total",
				"tcpfsm_connect_failures_total", "tcpfsm_handshake_duration_seconds_bucket", "tcpfsm_connection_duration_seconds_bucket",
				"tcpfsm_connections_stuck", "tcpfsm_oldest_connection_age_seconds"} {
				if strings.Contains(tg.Expr, m) && !strings.Contains(tg.Expr, m+`{instance=~"$instance",namespace=~"$namespace",workload=~"$workload"`) {
					t.Errorf("panel %q: %s not selected by namespace and workload: %s", p.Title, m, tg.Expr)
				}
			}
		}
	}
	for _, p := range all {
		if p.Type == "heatmap" {
			for _, tg := range p.Targets {
				if tg.Format != "heatmap" {
					t.Errorf("heatmap %q: target format %q, want heatmap (buckets, not series)", p.Title, tg.Format)
				}
			}
		}
	}
}

// ---- Kubernetes ----

func TestDeployDaemonSet(t *testing.T) {
	data := readDeploy(t, "kubernetes/daemonset.yaml")
	dec := yaml.NewDecoder(bytes.NewReader(data))
	kinds := map[string]map[string]any{}
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("daemonset.yaml does not parse: %v", err)
		}
		if doc == nil {
			continue
		}
		kind, _ := doc["kind"].(string)
		if doc["apiVersion"] == nil || kind == "" {
			t.Errorf("document without apiVersion or kind: %v", doc)
		}
		kinds[kind] = doc
	}
	ds := kinds["DaemonSet"]
	if ds == nil || ds["apiVersion"] != "apps/v1" {
		t.Fatalf("no apps/v1 DaemonSet: %v", ds)
	}
	get := func(v any, path ...any) any {
		for _, p := range path {
			switch k := p.(type) {
			case string:
				m, _ := v.(map[string]any)
				v = m[k]
			case int:
				s, _ := v.([]any)
				if k >= len(s) {
					return nil
				}
				v = s[k]
			}
		}
		return v
	}
	pod := get(ds, "spec", "template", "spec")
	if get(ds, "spec", "selector", "matchLabels", "app.kubernetes.io/name") != get(ds, "spec", "template", "metadata", "labels", "app.kubernetes.io/name") {
		t.Error("the selector does not match the pod's labels")
	}
	if get(pod, "hostNetwork") != true || get(pod, "dnsPolicy") != "ClusterFirstWithHostNet" {
		t.Error("want hostNetwork with dnsPolicy ClusterFirstWithHostNet")
	}
	if hp := get(pod, "hostPID"); hp == true {
		t.Error("hostPID: the default deployment does not use it")
	}
	if get(pod, "automountServiceAccountToken") != false || kinds["ServiceAccount"] == nil {
		t.Error("want a ServiceAccount and no mounted token")
	}
	c := get(pod, "containers", 0)
	sc := get(c, "securityContext")
	if get(sc, "privileged") == true || get(sc, "allowPrivilegeEscalation") != false || get(sc, "readOnlyRootFilesystem") != true {
		t.Errorf("securityContext: %v", sc)
	}
	if d := get(sc, "capabilities", "drop"); !slices.Equal(toStrings(d), []string{"ALL"}) {
		t.Errorf("capabilities drop %v, want [ALL]", d)
	}
	if a := get(sc, "capabilities", "add"); !slices.Equal(toStrings(a), []string{"BPF", "PERFMON"}) {
		t.Errorf("capabilities add %v, want exactly [BPF PERFMON]", a)
	}
	if get(sc, "runAsUser") != 0 {
		t.Error("runAsUser: added capabilities are effective only for uid 0 in Kubernetes")
	}
	if get(c, "readinessProbe", "httpGet", "path") != "/readyz" || get(c, "livenessProbe", "httpGet", "path") != "/healthz" {
		t.Error("want a readiness probe on /readyz and a liveness probe on /healthz")
	}
	if get(c, "readinessProbe", "httpGet", "port") != "metrics" || get(c, "ports", 0, "name") != "metrics" {
		t.Error("probes and the port: want the named port metrics")
	}
	if get(ds, "spec", "template", "metadata", "annotations", "prometheus.io/scrape") != "true" {
		t.Error("want the prometheus.io/scrape annotation")
	}
	port := get(c, "ports", 0, "containerPort")
	if fmt.Sprint(get(ds, "spec", "template", "metadata", "annotations", "prometheus.io/port")) != fmt.Sprint(port) {
		t.Errorf("prometheus.io/port does not match containerPort %v", port)
	}
	for _, k := range []string{"cpu", "memory"} {
		if get(c, "resources", "requests", k) == nil || get(c, "resources", "limits", k) == nil {
			t.Errorf("resources: want requests and limits for %s", k)
		}
	}
	// Host paths are mounted read-only.
	mounts, _ := get(c, "volumeMounts").([]any)
	seen := map[string]bool{}
	for _, m := range mounts {
		if get(m, "readOnly") != true {
			t.Errorf("volume mount %v is not read-only", m)
		}
		seen[fmt.Sprint(get(m, "mountPath"))] = true
	}
	for _, p := range []string{"/sys/kernel/btf", "/sys/fs/cgroup", "/run/containerd"} {
		if !seen[p] {
			t.Errorf("no read-only mount of %s", p)
		}
	}
	// The CRI socket's directory, where the agent looks for it: a mount of
	// the socket itself would keep a restarted runtime's old one.
	criDir := false
	for _, e := range cri.DefaultEndpoints {
		if seen[filepath.Dir(e.Path)] {
			criDir = true
		}
	}
	if !criDir {
		t.Errorf("no mount of a default CRI socket's directory (%v)", cri.DefaultEndpoints)
	}
	for _, v := range get(pod, "volumes").([]any) {
		if get(v, "name") == "cri" && get(v, "hostPath", "type") != "DirectoryOrCreate" {
			t.Errorf("cri volume %v: want a DirectoryOrCreate hostPath (nodes without that runtime still start)", v)
		}
	}
	// The agent's arguments are a valid configuration, and it listens on
	// the port the probes and Prometheus use.
	args := toStrings(get(c, "args"))
	if len(args) == 0 || args[0] != "agent" {
		t.Fatalf("args %v: want agent first", args)
	}
	r, _, err := parseAgentConfig(args[1:], nil)
	if err != nil {
		t.Fatalf("the DaemonSet's agent arguments: %v", err)
	}
	if !slices.Contains(r.metrics.Labels, metrics.LabelNamespace) || !slices.Contains(r.metrics.Labels, metrics.LabelWorkload) {
		t.Errorf("metrics labels %v: the rules and the dashboard group by namespace and workload", r.metrics.Labels)
	}
	if !strings.HasSuffix(r.listen, ":"+fmt.Sprint(port)) {
		t.Errorf("agent listens on %s, the container port is %v", r.listen, port)
	}
}

func toStrings(v any) []string {
	s, _ := v.([]any)
	var out []string
	for _, x := range s {
		out = append(out, fmt.Sprint(x))
	}
	return out
}

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

// The SystemCallFilter= semantics TestSystemdSyscallFilter relies on: the
// first line is the allow list, later ones add, ~lines remove, groups
// nest.
func TestUnitSyscalls(t *testing.T) {
	groups := map[string][]string{
		"@system-service": {"@default", "read", "setns"},
		"@default":        {"execve", "exit"},
		"@privileged":     {"bpf", "setuid", "@chown"},
		"@chown":          {"chown", "read"},
	}
	got := unitSyscalls(t, groups, []string{"@system-service", "~@privileged", "bpf perf_event_open"})
	want := []string{"bpf", "execve", "exit", "perf_event_open", "setns"}
	if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, want) {
		t.Errorf("allowed %v, want %v", keys, want)
	}
}
