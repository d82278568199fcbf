package main

// The agent's metrics as Prometheus takes them: promtool on a live
// scrape, and every query of deploy/ evaluated by a real Prometheus that
// scrapes a real agent (the server harness is in promserver_test.go).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"google.golang.org/protobuf/encoding/protodelim"
)

// ---- promtool on a live scrape ----

func TestAgentPromtoolCheckMetrics(t *testing.T) {
	nettest.RequireBPF(t)
	promtool := needTool(t, "promtool", "prometheus")
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	a := startAgent(t, bin, agentOptions{args: []string{"--netns", ns.Path(), "--log.file", filepath.Join(t.TempDir(), "log"),
		"--metrics.labels", "port,comm"}})
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	nettest.Serve(t, ln, 300)
	n := ns.Mixed(t, ln.Addr().String())
	a.waitMetric(t, "the traffic's closes", func(m map[string]*dto.MetricFamily) bool {
		return metricSum(m, "tcpfsm_connections_closed_total", "role", "active") >= float64(n.Graceful+n.Refused+n.Reset) &&
			metricSum(m, "tcpfsm_connections_closed_total", "role", "passive") >= float64(n.Graceful+n.Reset)
	})
	mfs, body := a.scrape(t)
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	// Every metric the agent promises is there, with its type.
	for name, typ := range map[string]dto.MetricType{
		"tcpfsm_state_transitions_total":            dto.MetricType_COUNTER,
		"tcpfsm_connections_opened_total":           dto.MetricType_COUNTER,
		"tcpfsm_connections_closed_total":           dto.MetricType_COUNTER,
		"tcpfsm_connect_failures_total":             dto.MetricType_COUNTER,
		"tcpfsm_handshake_duration_seconds":         dto.MetricType_HISTOGRAM,
		"tcpfsm_connection_duration_seconds":        dto.MetricType_HISTOGRAM,
		"tcpfsm_state_duration_seconds":             dto.MetricType_HISTOGRAM,
		"tcpfsm_connections":                        dto.MetricType_GAUGE,
		"tcpfsm_bytes_sent_total":                   dto.MetricType_COUNTER,
		"tcpfsm_bytes_received_total":               dto.MetricType_COUNTER,
		"tcpfsm_resets_total":                       dto.MetricType_COUNTER,
		"tcpfsm_syn_retransmits_total":              dto.MetricType_COUNTER,
		"tcpfsm_events_total":                       dto.MetricType_COUNTER,
		"tcpfsm_events_lost_total":                  dto.MetricType_COUNTER,
		"tcpfsm_tracked_connections":                dto.MetricType_GAUGE,
		"tcpfsm_evictions_total":                    dto.MetricType_COUNTER,
		"tcpfsm_attribution_misses_total":           dto.MetricType_COUNTER,
		"tcpfsm_anomalies_total":                    dto.MetricType_COUNTER,
		"tcpfsm_build_info":                         dto.MetricType_GAUGE,
		"tcpfsm_bpf_program_runs_total":             dto.MetricType_COUNTER,
		"tcpfsm_bpf_program_run_seconds_total":      dto.MetricType_COUNTER,
		"tcpfsm_bpf_program_recursion_misses_total": dto.MetricType_COUNTER,
		"tcpfsm_bpf_nested_runs_total":              dto.MetricType_COUNTER,
		"tcpfsm_ephemeral_ports":                    dto.MetricType_GAUGE,
		"go_goroutines":                             dto.MetricType_GAUGE,
		"process_cpu_seconds_total":                 dto.MetricType_COUNTER,
	} {
		if mf := mfs[name]; mf == nil || mf.GetType() != typ {
			t.Errorf("%s: %v, want a %v", name, mf.GetType(), typ)
		}
	}
	// The label conventions: lower-case states, the fixed label values.
	states := map[string]bool{}
	for _, m := range mfs["tcpfsm_connections"].GetMetric() {
		states[m.GetLabel()[0].GetValue()] = true
	}
	for _, s := range []string{"syn_sent", "syn_recv", "established", "fin_wait1", "fin_wait2", "time_wait", "close_wait", "last_ack", "listen", "closing"} {
		if !states[s] {
			t.Errorf("tcpfsm_connections has no state=%q: %v", s, states)
		}
	}
	if len(states) != 10 {
		t.Errorf("tcpfsm_connections states: %v, want the 10", states)
	}
	labelValues := func(name, label string) []string {
		var vs []string
		for _, m := range mfs[name].GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && !slices.Contains(vs, lp.GetValue()) {
					vs = append(vs, lp.GetValue())
				}
			}
		}
		slices.Sort(vs)
		return vs
	}
	for _, c := range []struct {
		name, label string
		want        []string
	}{
		{"tcpfsm_connect_failures_total", "reason", []string{"other", "refused", "reset", "timeout"}},
		{"tcpfsm_events_lost_total", "reason", []string{"program_busy", "ring_buffer_full"}},
		{"tcpfsm_resets_total", "direction", []string{"received", "sent"}},
	} {
		if got := labelValues(c.name, c.label); !slices.Equal(got, c.want) {
			t.Errorf("%s{%s}: %v, want %v", c.name, c.label, got, c.want)
		}
	}
	// Optional labels: the listening port on passive connections, comm.
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	if metricSum(mfs, "tcpfsm_connections_opened_total", "role", "passive", "port", port) < float64(n.Graceful) {
		t.Errorf("no passive opens labelled port=%s:\n%s", port, grepTcpfsm(body))
	}
	if metricSum(mfs, "tcpfsm_connections_closed_total", "kind", "refused") < float64(n.Refused) ||
		metricSum(mfs, "tcpfsm_connect_failures_total", "reason", "refused") < float64(n.Refused) ||
		metricSum(mfs, "tcpfsm_resets_total", "direction", "sent") < float64(n.Reset) ||
		metricSum(mfs, "tcpfsm_connections", "state", "time_wait") < 1 {
		t.Errorf("counters do not show the traffic:\n%s", grepTcpfsm(body))
	}
	// Buckets 1us x 4^k.
	h := mfs["tcpfsm_handshake_duration_seconds"].GetMetric()[0].GetHistogram()
	finite := 0
	for i, b := range h.GetBucket() {
		if math.IsInf(b.GetUpperBound(), 1) {
			continue
		}
		finite++
		if want := 1e-6 * math.Pow(4, float64(i)); math.Abs(b.GetUpperBound()-want) > want*1e-9 {
			t.Errorf("bucket %d: le %v, want %v", i, b.GetUpperBound(), want)
		}
	}

	if finite < 10 {
		t.Errorf("%d classic buckets", finite)
	}
	// OpenMetrics: exemplars naming a connection id.
	code, om := a.get(t, "/metrics", "", "", "Accept", "application/openmetrics-text; version=1.0.0; charset=utf-8")
	if code != http.StatusOK || !regexp.MustCompile(`tcpfsm_\w+_duration_seconds_bucket\{[^}]*\} \d+ # \{conn_id="\d+"\}`).Match(om) {
		t.Errorf("OpenMetrics scrape (%d) has no {conn_id} exemplar", code)
	}
	// Protobuf: native buckets next to the classic ones.
	code, pb := a.get(t, "/metrics", "", "", "Accept", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited")
	if code != http.StatusOK {
		t.Fatalf("protobuf scrape: %d", code)
	}
	r := bufio.NewReader(bytes.NewReader(pb))
	native := false
	for {
		var mf dto.MetricFamily
		if err := protodelim.UnmarshalFrom(r, &mf); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("protobuf scrape: %v", err)
			}
			break
		}
		if mf.GetName() == "tcpfsm_handshake_duration_seconds" {
			for _, m := range mf.GetMetric() {
				h := m.GetHistogram()
				if h.GetSchema() != 0 || len(h.GetPositiveSpan()) > 0 {
					native = len(h.GetBucket()) > 0
				}
			}
		}
	}
	if !native {
		t.Error("protobuf scrape: tcpfsm_handshake_duration_seconds has no native buckets next to its classic ones")
	}
}

// Every PromQL expression of deploy/: the dashboard's targets (with its
// variables filled in), the recording rules, and what each alert compares,
// returns data from a real Prometheus scraping a real agent.
func TestAgentPrometheusEndToEnd(t *testing.T) {
	nettest.RequireBPF(t)
	promBin := needTool(t, "prometheus", "prometheus")
	rulesFile, err := filepath.Abs(deployFile(t, "prometheus/rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	d := loadDashboard(t)
	rules := loadRules(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	a := startAgent(t, bin, agentOptions{args: []string{"--netns", ns.Path(), "--log.file", filepath.Join(t.TempDir(), "log"),
		"--metrics.bpf-stats"}})
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	nettest.Serve(t, ln, 2000)
	addr := ln.Addr().String()
	// A first round before Prometheus starts: every labelled series
	// exists from its first scrape on, so the second round shows in rates.
	n1 := ns.Mixed(t, addr)
	a.waitMetric(t, "the first round", func(m map[string]*dto.MetricFamily) bool {
		return metricSum(m, "tcpfsm_connections_closed_total", "role", "active") >= float64(n1.Graceful+n1.Refused+n1.Reset)
	})

	p := startPrometheus(t, promBin, a.addr, rulesFile)
	deadline := time.Now().Add(20 * time.Second)
	for p.value(t, `count_over_time(up{job="tcpfsm"}[1m])`) < 3 || p.value(t, `up{job="tcpfsm"}`) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("prometheus did not scrape the agent 3 times within 20s:\n%s", p.stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	n2 := ns.Mixed(t, addr)
	total := float64(n1.Graceful + n1.Refused + n1.Reset + n2.Graceful + n2.Refused + n2.Reset)

	// The queries.
	type namedQuery struct{ from, q string }
	var queries []namedQuery
	instance := a.addr
	for title, exprs := range dashboardExprs(&d) {
		for _, e := range exprs {
			queries = append(queries, namedQuery{"dashboard panel " + title, grafanaVars(e, instance, "1m")})
		}
	}
	for _, r := range rules {
		switch {
		case r.Record != "":
			queries = append(queries, namedQuery{"recording rule " + r.Record + " (expr)", r.Expr},
				namedQuery{"recording rule " + r.Record, r.Record})
		case r.Alert != "":
			lhs, ok := alertLHS(r.Expr)
			if !ok {
				t.Fatalf("alert %s: %q is not <recording rule> <op> <number>", r.Alert, r.Expr)
			}
			queries = append(queries, namedQuery{"alert " + r.Alert + " (left-hand side)", lhs})
		}
	}
	slices.SortFunc(queries, func(x, y namedQuery) int { return strings.Compare(x.from+x.q, y.from+y.q) })

	// Wait until Prometheus has the second round (scraped, rules
	// evaluated), then until every query has data.
	deadline = time.Now().Add(30 * time.Second)
	var empty []namedQuery
	for {
		empty = empty[:0]
		if v := p.value(t, `sum(tcpfsm_connections_closed_total{role="active"})`); !(v >= total) {
			empty = append(empty, namedQuery{"the second round", fmt.Sprintf("%v active closes, want %v", v, total)})
		}
		if v := p.value(t, `sum(instance_kind:tcpfsm_connections_closed:rate5m)`); !(v > 0) {
			empty = append(empty, namedQuery{"the second round", fmt.Sprintf("close rate %v, want > 0", v)})
		}
		for _, q := range queries {
			if len(p.query(t, q.q)) == 0 {
				empty = append(empty, q)
			}
		}
		if len(empty) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, q := range empty {
				t.Errorf("no data: %s: %s", q.from, q.q)
			}
			t.Fatalf("agent's /metrics:\n%s", func() string { _, b := a.scrape(t); return grepTcpfsm(b) }())
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("%d queries, each with data", len(queries))

	// Every rule evaluates without error.
	resp, err := http.Get("http://" + p.addr + "/api/v1/rules")
	if err != nil {
		t.Fatal(err)
	}
	var rr struct {
		Data struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	err = json.NewDecoder(resp.Body).Decode(&rr)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("rules: %v", err)
	}
	nrules := 0
	for _, g := range rr.Data.Groups {
		for _, r := range g.Rules {
			nrules++
			if r.Health != "ok" {
				t.Errorf("rule %s: health %q %s", r.Name, r.Health, r.LastError)
			}
		}
	}
	if nrules != len(rules) {
		t.Errorf("prometheus loaded %d rules, the file has %d", nrules, len(rules))
	}

	// The values mean what they say.
	checks := []struct {
		q      string
		lo, hi float64
	}{
		{`instance:tcpfsm_up:max`, 1, 1},
		{`instance:tcpfsm_connections_time_wait:sum`, 1, 1000},
		{`instance:tcpfsm_ephemeral_ports:max`, 1, 65535},
		{`instance:tcpfsm_time_wait_ephemeral_ports:ratio`, 1e-6, 0.5},
		{`instance:tcpfsm_connect_failures:ratio_rate5m`, 0.01, 0.5},
		{`instance:tcpfsm_connections_close_wait:sum`, 0, 0},
		{`instance:tcpfsm_connections_close_wait_stuck:sum`, 0, 0},
		{`count(instance_state:tcpfsm_connections_stuck:sum)`, 5, 5},
		{`instance:tcpfsm_events_lost:rate5m`, 0, 0},
		{`max(instance_role:tcpfsm_handshake_duration_seconds:p50_rate5m)`, 1e-7, 0.1},
		{`sum(tcpfsm_connections_closed_total{kind="refused"})`, float64(n1.Refused + n2.Refused), float64(n1.Refused + n2.Refused)},
		{`sum(instance_direction:tcpfsm_resets:rate5m{direction="sent"})`, 1e-6, 100},
	}
	for _, c := range checks {
		if v := p.value(t, c.q); !(v >= c.lo && v <= c.hi) {
			t.Errorf("%s = %v, want %v to %v", c.q, v, c.lo, c.hi)
		}
	}
	// The ephemeral port gauge is this machine's range.
	if ports, err := readEphemeral(); err == nil {
		if v := p.value(t, `instance:tcpfsm_ephemeral_ports:max`); v != float64(ports) {
			t.Errorf("instance:tcpfsm_ephemeral_ports:max = %v, the host has %d", v, ports)
		}
	}
}

// readEphemeral is the port range's size without reserved ports, read
// here directly.
func readEphemeral() (int, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	lo, _ := strconv.Atoi(f[0])
	hi, _ := strconv.Atoi(f[1])
	if r, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_reserved_ports"); err == nil && strings.TrimSpace(string(r)) != "" {
		return 0, errors.New("reserved ports set")
	}
	return hi - lo + 1, nil
}
