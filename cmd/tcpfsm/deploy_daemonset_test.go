package main

// deploy/kubernetes: the DaemonSet's security context, mounts and probes.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/exporter/metrics"
	"github.com/tcpfsm/tcpfsm/tracer/metadata/cri"
	"go.yaml.in/yaml/v3"
)

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
