package main

// deploy/grafana: the dashboard's panels, variables and queries.

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

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
