package main

// Kubernetes names end to end: a private containerd with its CRI plugin
// (internal/testkit/containerd), two host-network pods in two namespaces
// whose containers (a static helper, internal/testkit/tcppeer, in a
// hand-built image) connect to each other on loopback, the real agent and
// `tcpfsm life` started after them, a real Prometheus, and containerd
// stopped and started again mid-run. The pods, peers and log readers are
// in k8s_harness_test.go.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/tcpfsm/tcpfsm/internal/testkit/containerd"
	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/internal/testkit/ociimage"
)

// end is one record's connection end, for finding the other end.
type end struct {
	laddr string
	lport int
	raddr string
	rport int
}

func endOf(r map[string]any) end {
	return end{str(r, "laddr"), num(r, "lport"), str(r, "raddr"), num(r, "rport")}
}

func (e end) swap() end { return end{e.raddr, e.rport, e.laddr, e.lport} }

func TestK8sPodsNamed(t *testing.T) {
	notInKernelVM(t)
	nettest.RequireBPF(t)
	promBin := needTool(t, "prometheus", "prometheus")
	rulesFile, err := filepath.Abs(deployFile(t, "prometheus/rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	ctrd := containerd.Start(t)
	bin := buildBinary(t)
	ctrd.Import(t, ociimage.Image{Name: peerImage, Entrypoint: []string{"/tcppeer"}, Files: []ociimage.File{
		{Path: "tcppeer", Mode: 0o755, Src: buildPeer(t)},
		{Path: "jobs/.keep", Data: []byte{}},
	}})

	webPort, dbPort, closedPort := freePort(t), freePort(t), freePort(t)
	webPod := ctrd.RunPod(t, containerd.Pod{Name: "web-7d4b9c8f6-x2x4q", Namespace: "shop",
		Labels: map[string]string{"app": "web", "pod-template-hash": "7d4b9c8f6", "tier": "front"}})
	dbPod := ctrd.RunPod(t, containerd.Pod{Name: "db-0", Namespace: "data",
		Labels: map[string]string{"app": "db", "controller-revision-hash": "db-5f8d6c7b9", "statefulset.kubernetes.io/pod-name": "db-0"}})
	// A pod in a network namespace of its own, with a sandbox IP: a peer
	// named by its IP. (The stand-in CNI plugin gives it 127.0.0.42 and
	// configures nothing; the test listens on that address itself.)
	ctrd.RunPod(t, containerd.Pod{Name: "gateway-0", Namespace: "edge", IP: "127.0.0.42"})
	edgeLn, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 42)})
	if err != nil {
		t.Fatal(err)
	}
	defer edgeLn.Close()
	nettest.Serve(t, edgeLn, 100)
	web := runPeer(t, ctrd, webPod, "web", webPort)
	db := runPeer(t, ctrd, dbPod, "db", dbPort)
	webWho := who{"shop", "web-7d4b9c8f6-x2x4q", "web", "Deployment", "web", "web"}
	dbWho := who{"data", "db-0", "db", "StatefulSet", "db", "db"}
	byContainer := map[string]who{"containerd:" + web.id: webWho, "containerd:" + db.id: dbWho}
	var lateWho who // the container started while containerd is away

	// The tracers start after the containers: the first list names them.
	meta := []string{"--cri.endpoint", ctrd.Socket, "--engine.endpoints", "none", "--metrics.pod-labels", "app"}
	logFile := filepath.Join(t.TempDir(), "agent.jsonl")
	a := startAgent(t, bin, agentOptions{args: append(append([]string{"--log.file", logFile,
		"--metrics.labels", "namespace,workload,container,pod"}, small...), meta...)})
	lifeArgs := append([]string{"--at-close", "-o", "json"}, meta...)
	lifes := map[string]*lifeRun{
		"all":            startLife(t, bin, "all", lifeArgs...),
		"pod":            startLife(t, bin, "pod", append(lifeArgs, "--pod", "data/db-0")...),
		"namespace":      startLife(t, bin, "namespace", append(lifeArgs, "--namespace", "shop")...),
		"workload":       startLife(t, bin, "workload", append(lifeArgs, "--workload", "statefulset/db")...),
		"container-name": startLife(t, bin, "container-name", append(lifeArgs, "--container-name", "web")...),
	}
	// record writes the runtime's answers into its recording: a replay
	// names what life named.
	recFile := filepath.Join(t.TempDir(), "pods.rec")
	rec := startPrinter(t, bin, "record", "record", append([]string{"-w", recFile}, meta...)...)
	// trace never waits: it prints what it knows, the containers listed
	// at its start named.
	trace := startPrinter(t, bin, "trace", "trace", append([]string{"-o", "json", "--container-name", "db"}, meta[:4]...)...)
	passes := map[string]string{ // each filter's one container
		"pod": "containerd:" + db.id, "namespace": "containerd:" + web.id,
		"workload": "containerd:" + db.id, "container-name": "containerd:" + web.id,
	}

	// Round 1: db connects to web 3 times, web to db twice, and db once
	// to a port nobody listens on.
	db.dial(t, webPort, 3, 1000, true)
	web.dial(t, dbPort, 2, 500, true)
	db.dial(t, closedPort, 1, 0, false)
	web.dialAddr(t, edgeLn.Addr().String(), 1, 100, true)
	a.waitMetric(t, "round 1's closes", func(m map[string]*dto.MetricFamily) bool {
		return metricSum(m, "tcpfsm_connections_closed_total", "namespace", "data") >= 6 &&
			metricSum(m, "tcpfsm_connections_closed_total", "namespace", "shop") >= 6
	})
	edgeWho := who{ns: "edge", pod: "gateway-0", kind: "Pod", workload: "gateway-0"}
	checkEdge := func(what string, recs []map[string]any) {
		t.Helper()
		n := 0
		for _, r := range recs {
			if str(r, "raddr") == "127.0.0.42" && str(r, "owner", "container") == "containerd:"+web.id {
				peer, _ := r["peer_k8s"].(map[string]any)
				edgeWho.check(t, what+": web to the edge pod's IP", peer, false)
				if peer != nil && peer["container"] != nil {
					t.Errorf("%s: a peer by sandbox IP names no container: %v", what, peer)
				}
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: %d records of web to 127.0.0.42, want 1", what, n)
		}
	}

	// life: both ends of every connection between the pods, each naming
	// its pod, container and workload, and the other end's.
	// checkBothEnds: every record of web and db names its pod, container
	// and workload, and the other end's when the other end is web or db
	// (want of those); the late container, unnamed while containerd was
	// away, is named as a peer or not at all.
	checkBothEnds := func(what string, recs []map[string]any, want int) {
		t.Helper()
		ends := map[end]map[string]any{}
		for _, r := range recs {
			ends[endOf(r)] = r
		}
		n := 0
		for _, r := range recs {
			self, ok := byContainer[str(r, "owner", "container")]
			if !ok || self == lateWho {
				continue
			}
			e := endOf(r)
			desc := fmt.Sprintf("%s: %s %s :%d -> :%d", what, self.container, str(r, "role"), e.lport, e.rport)
			self.check(t, desc, r["k8s"].(map[string]any), true)
			if str(r, "owner", "container_name") != self.container || str(r, "owner", "image") != peerImage {
				t.Errorf("%s: owner %v", desc, r["owner"])
			}
			peer, _ := r["peer_k8s"].(map[string]any)
			if str(r, "close") == "refused" {
				if peer != nil {
					t.Errorf("%s: a refused connect has no peer: %v", desc, peer)
				}
				continue
			}
			other, ok := ends[e.swap()]
			if !ok {
				t.Errorf("%s: the other end's record is missing", desc)
				continue
			}
			switch ow, known := byContainer[str(other, "owner", "container")]; {
			case !known: // the test's own end (the edge pod's IP)
			case ow == lateWho:
				if peer != nil {
					lateWho.check(t, desc+" peer", peer, false)
				}
			default:
				ow.check(t, desc+" peer", peer, false)
				n++
			}
		}
		if n != want {
			t.Errorf("%s: %d ends of connections between web and db named with their peers, want %d", what, n, want)
		}
	}
	byLife := map[string][]map[string]any{}
	for name, l := range lifes {
		byLife[name] = l.stop(t)
	}
	rec.stop(t)
	code, replayed, stderr := runCLI("replay", "--view", "life", "--at-close", "-o", "json", recFile)
	if code != exitOK {
		t.Fatalf("replay: exit %d: %s", code, stderr)
	}
	checkBothEnds("replay of record", jsonLines(t, replayed), 10)
	events := trace.stop(t)
	toWeb := 0
	noLabels := dbWho
	noLabels.app = "" // trace was given no --metrics.pod-labels
	for _, e := range events {
		noLabels.check(t, fmt.Sprintf("trace event %v", e["conn_id"]), e["k8s"].(map[string]any), true)
		if str(e, "container") != "containerd:"+db.id || str(e, "container_name") != "db" || str(e, "image") != peerImage {
			t.Errorf("trace event: container %q %q %q", str(e, "container"), str(e, "container_name"), str(e, "image"))
		}
		if num(e, "rport") == webPort && str(e, "new") == "ESTABLISHED" {
			toWeb++
		}
	}
	if toWeb != 3 {
		t.Errorf("trace --container-name db: %d connections of db to web established, want 3 (%d events)", toWeb, len(events))
	}
	checkBothEnds("life", byLife["all"], 10)
	checkEdge("life", byLife["all"])
	// Each filter passes exactly its pod's records: those the unfiltered
	// life has for that container, no other record at all.
	for name, container := range passes {
		want := 0
		for _, r := range byLife["all"] {
			if str(r, "owner", "container") == container {
				want++
			}
		}
		got := byLife[name]
		for _, r := range got {
			if c := str(r, "owner", "container"); c != container {
				t.Errorf("life --%s: a record of %q passed: %v", name, c, r)
			}
		}
		if len(got) != want || want < 5 {
			t.Errorf("life --%s: %d records, the unfiltered life has %d of %s; stderr:\n%s", name, len(got), want, container, lifes[name].stderr)
		}
	}

	// Metrics: the pods' labels, each value within its budget.
	mfs, _ := a.scrape(t)
	for label, want := range map[string][]string{
		"namespace": {"", "data", "shop"},
		"workload":  {"", "deployment/web", "statefulset/db"},
		"container": {"", "db", "web"}, // and ids of containers this containerd does not run
		"pod":       {"", "db-0", "web-7d4b9c8f6-x2x4q"},
	} {
		got := labelValues(mfs["tcpfsm_connections_closed_total"], label)
		for _, v := range got {
			if !slices.Contains(want, v) && !(label == "container" && strings.Contains(v, ":")) {
				t.Errorf("closed_total label %s=%q, want one of %v", label, v, want)
			}
		}
		for _, v := range want[1:] {
			if !slices.Contains(got, v) {
				t.Errorf("closed_total has no %s=%q: %v", label, v, got)
			}
		}
	}
	if v := metricSum(mfs, "tcpfsm_connect_failures_total", "workload", "statefulset/db", "reason", "refused"); v != 1 {
		t.Errorf("connect failures of statefulset/db refused = %v, want 1", v)
	}
	if v := metricSum(mfs, "tcpfsm_connections_opened_total", "namespace", "data", "role", "active"); v != 4 {
		t.Errorf("opened by namespace data, active = %v, want 4", v)
	}

	// Prometheus, with the labels on: every rule and panel expression has
	// data, and the per-workload rules name the pods' workloads.
	p := startPrometheus(t, promBin, a.addr, rulesFile)
	waitFor(t, "3 scrapes", 30*time.Second, func() bool {
		return p.value(t, `count_over_time(up{job="tcpfsm"}[1m])`) >= 3
	})
	// The per-workload failure ratio needs 6 connects in 5 minutes.
	db.dial(t, webPort, 10, 1000, true)
	db.dial(t, closedPort, 1, 0, false)
	web.dial(t, dbPort, 2, 500, true)
	checkPrometheus(t, p, a.addr)

	// containerd away: a container the agent never saw keeps its id,
	// errors are counted; once containerd is back, names come back.
	late, outages := startUnseen(t, a, ctrd, webPod)
	lateWho = who{"shop", "web-7d4b9c8f6-x2x4q", late.name, "Deployment", "web", "web"}
	byContainer["containerd:"+late.id] = lateWho
	late.dial(t, dbPort, 2, 300, true)
	a.waitMetric(t, "the outage counted", func(m map[string]*dto.MetricFamily) bool {
		return metricSum(m, "tcpfsm_metadata_errors_total") > 0 &&
			metricSum(m, "tcpfsm_metadata_source_up", "runtime", "containerd") == 0 &&
			metricSum(m, "tcpfsm_connections_closed_total", "container", "containerd:"+late.id) >= 2
	})
	mfs, _ = a.scrape(t)
	errs := metricSum(mfs, "tcpfsm_metadata_errors_total")
	if known := metricSum(mfs, "tcpfsm_metadata_errors_total", "reason", "socket_missing") +
		metricSum(mfs, "tcpfsm_metadata_errors_total", "reason", "unavailable"); known != errs {
		t.Errorf("errors while containerd is stopped: %v, of which socket_missing or unavailable %v", errs, known)
	}
	ctrd.Restart(t)
	deadline := time.Now().Add(90 * time.Second)
	for {
		late.dial(t, dbPort, 1, 300, true)
		var body []byte
		mfs, body = a.scrape(t)
		if metricSum(mfs, "tcpfsm_connections_closed_total", "container", late.name) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no record of the late container named within 90s of containerd's restart:\n%s\n%s", grepTcpfsm(body), a.stderr)
		}
		time.Sleep(time.Second)
	}
	if v := metricSum(mfs, "tcpfsm_metadata_source_up", "runtime", "containerd"); v != 1 {
		t.Errorf("source up after the restart: %v", v)
	}
	if code := a.stop(t); code != 0 {
		t.Fatalf("agent exit %d: %s", code, a.stderr)
	}

	// The agent's log: round 1 as life saw it (the first ten ends between
	// web and db), the late container's records by id while containerd
	// was away and by name after, a warning per kind of failure.
	recs := logLines(t, logFile)
	checkBothEnds("agent", recs, 2*(5+12)) // round 1 and the Prometheus round
	checkEdge("agent", recs)
	var byID, byName int
	for _, r := range recs {
		if str(r, "owner", "container") != "containerd:"+late.id {
			continue
		}
		peer, _ := r["peer_k8s"].(map[string]any)
		dbWho.check(t, "late's peer", peer, false)
		if r["k8s"] == nil {
			byID++
			if str(r, "owner", "container_name") != "" {
				t.Errorf("unnamed record with a container name: %v", r["owner"])
			}
			continue
		}
		lateWho.check(t, "late", r["k8s"].(map[string]any), true)
		byName++
	}
	if byID < 2 || byName < 1 {
		t.Errorf("late container: %d records by id, %d by name; want at least 2 and 1", byID, byName)
	}
	stderr = a.stderr.String()
	if n := strings.Count(stderr, "container metadata unavailable"); n == 0 || n > 2*outages {
		t.Errorf("%d warnings about the runtime, want one per kind of failure:\n%s", n, stderr)
	}
	if !strings.Contains(stderr, "runtime is back") {
		t.Errorf("no word of the runtime's return:\n%s", stderr)
	}
}

// startUnseen starts a container the agent has not listed yet and stops
// containerd before the agent lists it: the container's first
// connection comes while the runtime cannot name it. A resync of the
// agent in between would have seen it: then it tries again.
func startUnseen(t *testing.T, a *agentRun, ctrd *containerd.Containerd, sb *containerd.Sandbox) (*peerContainer, int) {
	t.Helper()
	for try := 1; try <= 3; try++ {
		before := func() float64 { m, _ := a.scrape(t); return metricSum(m, "tcpfsm_metadata_cache_entries") }()
		late := runPeer(t, ctrd, sb, fmt.Sprintf("late-%d", try), 0)
		ctrd.Stop(t)
		if m, _ := a.scrape(t); metricSum(m, "tcpfsm_metadata_cache_entries") == before {
			return late, try
		}
		ctrd.Restart(t)
	}
	t.Fatal("the agent listed each new container before containerd could be stopped")
	return nil, 0
}

func labelValues(mf *dto.MetricFamily, label string) []string {
	var out []string
	for _, m := range mf.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label && !slices.Contains(out, lp.GetValue()) {
				out = append(out, lp.GetValue())
			}
		}
	}
	slices.Sort(out)
	return out
}

// checkPrometheus runs every dashboard and rule expression, and the
// dashboard's with its namespace and workload variables set to the db
// pod's, until each has data; the per-workload rules have series of both
// workloads.
func checkPrometheus(t *testing.T, p *promServer, instance string) {
	t.Helper()
	d := loadDashboard(t)
	var queries []string
	for _, exprs := range dashboardExprs(&d) {
		for _, e := range exprs {
			queries = append(queries, grafanaVars(e, instance, "1m"))
			// Set to the db pod's, where the pod has such series (it has
			// no connection open in a watched state: no stuck gauges).
			if strings.Contains(e, "$workload") && !strings.Contains(e, "tcpfsm_connections_stuck") &&
				!strings.Contains(e, "tcpfsm_oldest_connection_age_seconds") {
				queries = append(queries, grafanaVarsK8s(e, instance, "1m", "data", "statefulset/db"))
			}
		}
	}
	for _, r := range loadRules(t) {
		switch {
		case r.Record != "":
			queries = append(queries, r.Record)
		case r.Alert != "":
			lhs, _ := alertLHS(r.Expr)
			queries = append(queries, lhs)
		}
	}
	queries = append(queries,
		`namespace_workload:tcpfsm_connections_opened_active:rate5m{namespace="data",workload="statefulset/db"} > 0`,
		`namespace_workload:tcpfsm_connections_opened_active:rate5m{namespace="shop",workload="deployment/web"} > 0`,
		`namespace_workload_reason:tcpfsm_connect_failures:rate5m{namespace="data",workload="statefulset/db",reason="refused"} > 0`,
		`namespace_workload:tcpfsm_connect_failures:ratio_rate5m{namespace="data",workload="statefulset/db"} > 0`,
		`namespace_workload_role:tcpfsm_handshake_duration_seconds:p99_rate5m{namespace="shop",workload="deployment/web",role="passive"}`,
	)
	deadline := time.Now().Add(45 * time.Second)
	for {
		var empty []string
		for _, q := range queries {
			if len(p.query(t, q)) == 0 {
				empty = append(empty, q)
			}
		}
		if len(empty) == 0 {
			t.Logf("%d queries with the namespace, workload, container and pod labels on, each with data", len(queries))
			return
		}
		if time.Now().After(deadline) {
			for _, q := range empty {
				t.Errorf("no data: %s", q)
			}
			var b bytes.Buffer
			if err := json.NewEncoder(&b).Encode(p.query(t, `{__name__=~"namespace_workload.*"}`)); err != nil {
				t.Fatal(err)
			}
			t.Fatalf("per-workload series: %s", b.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
}
