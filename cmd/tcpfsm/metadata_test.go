package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/metadata"
)

// jsonLines parses one JSON object per line.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var rows []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%v: %q", err, l)
		}
		rows = append(rows, m)
	}
	return rows
}

func podOf(row map[string]any) string {
	k, _ := row["k8s"].(map[string]any)
	if k == nil {
		return ""
	}
	return k["namespace"].(string) + "/" + k["pod"].(string)
}

// Each metadata filter passes exactly the records and events of its pod
// in a replay (where all of them apply in user space): the same ones the
// unfiltered output attributes to that pod.
func TestReplayMetadataFilters(t *testing.T) {
	views := [][]string{{"--view", "life", "--all"}, {"--view", "trace"}}
	for _, view := range views {
		args := append(append([]string{"replay", "-o", "json"}, view...), k8sRecording)
		code, all, stderr := runCLI(args...)
		if code != exitOK {
			t.Fatalf("%v: %d %s", args, code, stderr)
		}
		byPod := map[string]int{}
		for _, r := range jsonLines(t, all) {
			byPod[podOf(r)]++
		}
		if byPod["shop/web-7d4b9c8f6-x2x4q"] == 0 || byPod["batch/loadgen-0"] == 0 {
			t.Fatalf("%v: records by pod %v", view, byPod)
		}
		for _, tc := range []struct {
			flags []string
			pod   string
		}{
			{[]string{"--namespace", "shop"}, "shop/web-7d4b9c8f6-x2x4q"},
			{[]string{"--pod", "loadgen-0"}, "batch/loadgen-0"},
			{[]string{"--pod", "batch/loadgen-0"}, "batch/loadgen-0"},
			{[]string{"--workload", "deployment/web"}, "shop/web-7d4b9c8f6-x2x4q"},
			{[]string{"--workload", "loadgen"}, "batch/loadgen-0"},
			{[]string{"--container-name", "nginx"}, "shop/web-7d4b9c8f6-x2x4q"},
			{[]string{"--namespace", "shop", "--container-name", "client"}, ""},
			{[]string{"--workload", "statefulset/web"}, ""},
			{[]string{"--pod", "shop/loadgen-0"}, ""},
		} {
			a := append(append(append([]string{"replay", "-o", "json"}, view...), tc.flags...), k8sRecording)
			code, out, stderr := runCLI(a...)
			if code != exitOK {
				t.Fatalf("%v: %d %s", a, code, stderr)
			}
			rows := jsonLines(t, out)
			for _, r := range rows {
				if podOf(r) != tc.pod {
					t.Errorf("%v: a record of %q passed", a, podOf(r))
				}
			}
			if want := byPod[tc.pod]; tc.pod != "" && len(rows) != want || tc.pod == "" && len(rows) != 0 {
				t.Errorf("%v: %d records, want %d", a, len(rows), want)
			}
		}
	}
	// The table has the column, and filters apply to it too.
	_, out, _ := runCLI("replay", "--view", "life", "--workload", "web", k8sRecording)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.HasSuffix(lines[0], "  CONTAINER") || len(lines) < 2 {
		t.Fatalf("table: %q", out)
	}
	for _, l := range lines[1:] {
		if !strings.HasSuffix(l, "  shop/web-7d4b9c8f6-x2x4q/nginx") {
			t.Errorf("row of another container: %q", l)
		}
	}
	// A recording without metadata: no column, and a metadata filter
	// passes nothing (nothing is named).
	_, out, _ = runCLI("replay", "--view", "life", mixRecording)
	if strings.Contains(out, "CONTAINER") {
		t.Errorf("column without metadata:\n%s", out)
	}
	_, out, _ = runCLI("replay", "--namespace", "shop", "--no-header", mixRecording)
	if out != "" {
		t.Errorf("--namespace on a recording without names passed:\n%s", out)
	}
}

func TestMetaFilterMatch(t *testing.T) {
	web := &metadata.Meta{Name: "nginx", Pod: metadata.Pod{Namespace: "shop", Name: "web-1",
		Workload: metadata.Workload{Kind: "Deployment", Name: "web"}}}
	plain := &metadata.Meta{Name: "cache"}
	for _, tc := range []struct {
		f         metaFilter
		web, none bool
		plain     bool
	}{
		{metaFilter{}, true, true, true},
		{metaFilter{namespace: "shop"}, true, false, false},
		{metaFilter{namespace: "data"}, false, false, false},
		{metaFilter{pod: "web-1"}, true, false, false},
		{metaFilter{pod: "web-1", podNamespace: "data"}, false, false, false},
		{metaFilter{pod: "web-1", podInKernel: true}, true, true, true}, // the kernel did it
		{metaFilter{workloadName: "web"}, true, false, false},
		{metaFilter{workloadKind: "deployment", workloadName: "web"}, true, false, false},
		{metaFilter{workloadKind: "statefulset", workloadName: "web"}, false, false, false},
		{metaFilter{containerName: "cache"}, false, false, true},
	} {
		if got := tc.f.match(web); got != tc.web {
			t.Errorf("%+v on web: %v", tc.f, got)
		}
		if got := tc.f.match(nil); got != tc.none {
			t.Errorf("%+v on nothing: %v", tc.f, got)
		}
		if got := tc.f.match(plain); got != tc.plain {
			t.Errorf("%+v on a plain container: %v", tc.f, got)
		}
	}
}

// The metadata filters are checked like every other, and record leaves
// the user-space ones to replay.
func TestMetadataFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"life", "--workload", "daemon/x"}, "--workload"},
		{[]string{"trace", "--pod", "a/b/c"}, "--pod"},
		{[]string{"life", "--namespace", "Shop"}, "--namespace"},
		{[]string{"life", "--cri.endpoint", "relative"}, "--cri.endpoint"},
		{[]string{"life", "--metadata.wait", "1m"}, "--metadata.wait"},
		{[]string{"trace", "--metadata.wait", "1s"}, "unknown flag: --metadata.wait"},
		{[]string{"record", "-w", "/dev/null", "--namespace", "shop"}, "select at replay time"},
		{[]string{"life", "--pod", "web", "--cgroup", ".", "--cri.endpoint", "none", "--engine.endpoints", "none"}, "--pod and --cgroup exclude each other"},
		{[]string{"life", "--pod", "web", "--cri.endpoint", "none", "--engine.endpoints", "none"}, "needs the container runtime"},
	} {
		code, stdout, stderr := runCLI(tc.args...)
		checkOneLine(t, strings.Join(tc.args, " "), code, stdout, stderr, tc.want)
	}
}
