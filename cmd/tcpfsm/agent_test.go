package main

// The agent's configuration, without privileges: every field's bad values
// (as a flag and as a YAML key) exit 2 with one line naming the field, and
// the example configuration in deploy/ parses and validates.

import (
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/settings"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// configKeys lists every key of the YAML file, dotted, from the agent's
// setting descriptions.
func configKeys() []string {
	var keys []string
	var o agentConfig
	for _, st := range agentSettings(&o) {
		if k := settings.SpecOf(st).Key; k != "" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// configFlags names each YAML key's flag: "--max-tracked".
var configFlags = func() map[string]string {
	m := map[string]string{}
	var o agentConfig
	for _, st := range agentSettings(&o) {
		if sp := settings.SpecOf(st); sp.Key != "" {
			m[sp.Key] = "--" + sp.Flag
		}
	}
	return m
}()

// Every YAML key has a flag, and the flag exists.
func TestConfigKeysHaveFlags(t *testing.T) {
	var c agentConfig
	fs := settings.New(agentCommand(&c)).FlagSet()
	for _, k := range configKeys() {
		flag, ok := configFlags[k]
		if !ok || flag == "--" {
			t.Errorf("key %s has no flag", k)
			continue
		}
		if fs.Lookup(strings.TrimPrefix(flag, "--")) == nil {
			t.Errorf("key %s: flag %s is not registered", k, flag)
		}
	}
	if len(configFlags) != len(configKeys()) {
		t.Errorf("configFlags has %d entries, the file %d keys", len(configFlags), len(configKeys()))
	}
}

// yamlFor nests value under a dotted key: "metrics.label_limit", "0" ->
// "metrics:\n  label_limit: 0\n".
func yamlFor(key, value string) string {
	parts := strings.Split(key, ".")
	var b strings.Builder
	for i, p := range parts[:len(parts)-1] {
		b.WriteString(strings.Repeat("  ", i) + p + ":\n")
	}
	b.WriteString(strings.Repeat("  ", len(parts)-1) + parts[len(parts)-1] + ": " + value + "\n")
	return b.String()
}

// checkUsage runs the agent with args and wants exit 2 and one stderr line
// holding every one of wants.
func checkUsage(t *testing.T, what string, args []string, wants ...string) {
	t.Helper()
	type result struct {
		code           int
		stdout, stderr string
	}
	done := make(chan result, 1)
	go func() {
		code, stdout, stderr := runCLI(append([]string{"agent"}, args...)...)
		done <- result{code, stdout, stderr}
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		// The agent took the configuration and runs: it stays until the
		// test binary exits.
		t.Fatalf("%s: accepted; the agent is running", what)
	}
	code, stdout, stderr := res.code, res.stdout, res.stderr
	if code != exitUsage {
		t.Errorf("%s: exit %d, want %d; stderr %q", what, code, exitUsage, stderr)
		return
	}
	if stdout != "" {
		t.Errorf("%s: wrote to stdout: %q", what, stdout)
	}
	if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Errorf("%s: want one line, got %q", what, stderr)
	}
	for _, w := range wants {
		if !strings.Contains(stderr, w) {
			t.Errorf("%s: stderr %q does not name %q", what, stderr, w)
		}
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Every field, every kind of bad value, as a flag and as a YAML key.
func TestAgentConfigBadValues(t *testing.T) {
	dir := t.TempDir()
	badWeb := writeFile(t, dir, "web-bad.yml", "basic_auth_users:\n  alice: not-a-bcrypt-hash\n")
	badWebYAML := writeFile(t, dir, "web-broken.yml", "tls_server_config:\n  cert_file: [\n")
	notDir := writeFile(t, dir, "plain-file", "x")
	cases := []struct {
		key   string
		value string // as the flag's value; YAML gets yamlValue if set, else value
		yaml  string
		flag  bool // also try the flag (false: the value is a YAML-only shape)
	}{
		{key: "web.listen_address", value: "no-port-here", flag: true},
		{key: "web.listen_address", value: "127.0.0.1", flag: true},
		{key: "web.config_file", value: filepath.Join(dir, "missing.yml"), flag: true},
		{key: "web.config_file", value: badWeb, flag: true},
		{key: "web.config_file", value: badWebYAML, flag: true},
		{key: "metrics.labels", value: "pid", yaml: "[pid]", flag: true},
		{key: "metrics.labels", value: "port,port", yaml: "[port, port]", flag: true},
		{key: "metrics.labels", value: "raddr", yaml: "raddr"},
		{key: "metrics.labels", yaml: "{a: b}"},
		{key: "metrics.label_limit", value: "0", flag: true},
		{key: "metrics.label_limit", value: "1001", flag: true},
		{key: "metrics.label_limit", value: "-1", flag: true},
		{key: "metrics.label_limit", value: "many", flag: true},
		{key: "metrics.no_exemplars", value: "maybe", flag: true},
		{key: "metrics.bpf_stats", value: "maybe", flag: true},
		{key: "logs.file", value: "", yaml: `""`, flag: true},
		{key: "logs.file", value: filepath.Join(dir, "no", "such", "dir", "log.jsonl"), flag: true},
		{key: "logs.file", value: filepath.Join(notDir, "log.jsonl"), flag: true},
		{key: "logs.file", value: dir, flag: true},
		{key: "logs.transitions", value: "sometimes", flag: true},
		{key: "logs.sample", value: "0", flag: true},
		{key: "logs.sample", value: "1.5", flag: true},
		{key: "logs.sample", value: "-0.1", flag: true},
		{key: "logs.sample", value: "half", flag: true},
		{key: "logs.sample", value: "NaN", yaml: ".nan", flag: true},
		{key: "filter.pid", value: "-1", flag: true},
		{key: "filter.pid", value: "4294967296", flag: true},
		{key: "filter.pid", value: "init", flag: true},
		{key: "filter.local_ports", value: "0", yaml: "[0]", flag: true},
		{key: "filter.local_ports", value: "65536", yaml: "[65536]", flag: true},
		{key: "filter.local_ports", value: "80,http", yaml: "[80, http]", flag: true},
		{key: "filter.remote_ports", value: "0", yaml: "[0]", flag: true},
		{key: "filter.remote_ports", value: "-1", yaml: "[-1]", flag: true},
		{key: "filter.family", value: "ipv5", flag: true},
		{key: "filter.family", value: "inet", flag: true},
		{key: "filter.netns", value: "no-such-netns-tcpfsm", flag: true},
		{key: "filter.netns", value: "0", yaml: `"0"`, flag: true},
		{key: "filter.netns", value: notDir, flag: true},
		{key: "filter.netns", value: "/proc/self/ns/mnt", flag: true},
		{key: "filter.cgroup", value: "no/such/cgroup/tcpfsm", flag: true},
		{key: "filter.cgroup", value: "/etc", flag: true},
		{key: "filter.pod", value: "a/b/c", flag: true},
		{key: "filter.pod", value: "Web_1", flag: true},
		{key: "filter.pod", value: "shop/", flag: true},
		{key: "filter.namespace", value: "Shop!", flag: true},
		{key: "filter.workload", value: "daemon/agent", flag: true},
		{key: "filter.workload", value: "deployment/", flag: true},
		{key: "filter.container_name", value: "-x", flag: true},
		{key: "filter.container_name", value: "a b", flag: true},
		{key: "metadata.cri_endpoint", value: "relative.sock", flag: true},
		{key: "metadata.cri_endpoint", value: "tcp://127.0.0.1:1", flag: true},
		{key: "metadata.engine_endpoints", value: "none,/var/run/docker.sock", yaml: "[none, /var/run/docker.sock]", flag: true},
		{key: "metadata.engine_endpoints", value: "docker.sock", yaml: "[docker.sock]", flag: true},
		{key: "metadata.cache_size", value: "8", flag: true},
		{key: "metadata.cache_size", value: "2000000", flag: true},
		{key: "metadata.ttl", value: "0", flag: true},
		{key: "metadata.ttl", value: "48h", flag: true},
		{key: "metadata.wait", value: "11s", flag: true},
		{key: "metadata.wait", value: "5ms", flag: true},
		{key: "metrics.pod_labels", value: "a b", yaml: `["a b"]`, flag: true},
		{key: "metrics.pod_labels", value: "/app", yaml: `["/app"]`, flag: true},
		{key: "tracer.attach", value: "kprobe", flag: true},
		{key: "tracer.max_tracked", value: "0", flag: true},
		{key: "tracer.max_tracked", value: "-5", flag: true},
		{key: "tracer.max_tracked", value: "lots", flag: true},
		{key: "tracer.kernel_table", value: "8", flag: true},
		{key: "tracer.kernel_table", value: "99999999", flag: true},
		{key: "tracer.ring_buffer_bytes", value: "0", flag: true},
		{key: "tracer.ring_buffer_bytes", value: "1000", flag: true},
		{key: "tracer.ring_buffer_bytes", value: "12288", flag: true},
		{key: "tracer.time_wait_poll", value: "50ms", flag: true},
		{key: "tracer.time_wait_poll", value: "-1s", flag: true},
		{key: "tracer.time_wait_poll", value: "soon", flag: true},
		{key: "tracer.time_wait_poll", yaml: "5"},
		{key: "reconcile.interval", value: "500ms", flag: true},
		{key: "reconcile.interval", value: "2h", flag: true},
		{key: "reconcile.interval", value: "-1s", flag: true},
		{key: "stuck.syn_sent", value: "10ms", flag: true},
		{key: "stuck.syn_recv", value: "-3s", flag: true},
		{key: "stuck.fin_wait1", value: "25h", flag: true},
		{key: "stuck.fin_wait2", value: "a minute", flag: true},
		{key: "stuck.close_wait", value: "60", flag: true},
		{key: "stuck.last_ack", value: "1ns", flag: true},
		{key: "stuck.closing", yaml: "[1s]"},
	}
	covered := map[string]bool{}
	for _, tc := range cases {
		covered[tc.key] = true
		flag := configFlags[tc.key]
		if tc.flag {
			checkUsage(t, flag+"="+tc.value, []string{flag + "=" + tc.value}, flag)
		}
		v := tc.yaml
		if v == "" {
			v = tc.value
		}
		file := writeFile(t, dir, "bad.yml", yamlFor(tc.key, v))
		checkUsage(t, "YAML "+tc.key+": "+v, []string{"--config.file", file}, tc.key)
	}
	for _, k := range configKeys() {
		if !covered[k] {
			t.Errorf("no bad value tested for %s", k)
		}
	}
}

// The file's shape: unknown keys anywhere, wrong kinds of nodes, broken
// YAML, a missing file. Each exits 2 with one line naming what is wrong.
func TestAgentConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		content string
		want    []string
	}{
		{"metrics:\n  lables: [port]\n", []string{"metrics.lables", "unknown key", "line 2"}},
		{"tracr:\n  attach: auto\n", []string{"tracr", "unknown key", "line 1"}},
		{"web:\n  listen_address: \":9465\"\n  listen-address: \":1\"\n", []string{"web.listen-address", "unknown key", "line 3"}},
		{"filter: {pid: 1, prot: 2}\n", []string{"filter.prot", "unknown key"}},
		{"filter: {prot: 2, pid: 1}\n", []string{"filter.prot", "unknown key"}},
		{"metrics: {label_limit: x, labels: [port]}\n", []string{"metrics.", "line 1"}},
		{"metrics: 5\n", []string{"metrics", "line 1"}},
		{"logs:\n  - file\n", []string{"logs", "line 2"}},
		{"web: [\n", []string{"bad.yml"}},
		{"\tweb:\n", []string{"bad.yml"}},
	}
	for _, tc := range cases {
		file := writeFile(t, dir, "bad.yml", tc.content)
		checkUsage(t, "YAML "+tc.content, []string{"--config.file", file}, tc.want...)
	}
	checkUsage(t, "missing file", []string{"--config.file", filepath.Join(dir, "nope.yml")}, "--config.file", "nope.yml")
	checkUsage(t, "unknown flag", []string{"--metrics.lables", "port"}, "--metrics.lables")
	checkUsage(t, "argument", []string{"extra"}, `unexpected argument "extra"`)
}

// An empty file, or one with only comments, is the defaults.
func TestAgentConfigEmptyFile(t *testing.T) {
	dir := t.TempDir()
	for _, content := range []string{"", "# nothing\n", "---\n"} {
		file := writeFile(t, dir, "empty.yml", content)
		got, help, err := parseAgentConfig([]string{"--config.file", file}, nil)
		if err != nil || help {
			t.Fatalf("%q: %v", content, err)
		}
		want, _, _ := parseAgentConfig(nil, nil)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q: %+v, want the defaults %+v", content, got, want)
		}
	}
}

// Flags override the file, key by key.
func TestAgentConfigFlagsOverrideFile(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, dir, "c.yml", `
web:
  listen_address: "127.0.0.1:1"
metrics:
  labels: [port]
  label_limit: 5
logs:
  sample: 0.5
filter:
  local_ports: [80]
  family: ipv6
tracer:
  time_wait_poll: 2s
  max_tracked: 100
`)
	r, _, err := parseAgentConfig([]string{"--config.file", file, "--web.listen-address", "127.0.0.1:2",
		"--metrics.labels", "comm,container", "-L", "443,8443", "--time-wait-poll", "0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	filter, poll, maxTracked := r.session.Probe.Filter, r.session.TimeWaitPoll, r.session.Lifecycle.MaxTracked
	labels := r.metrics.Labels
	if r.listen != "127.0.0.1:2" || len(labels) != 2 || labels[0] != "comm" || r.metrics.LabelLimit != 5 || r.logs.Sample != 0.5 {
		t.Errorf("resolved: %+v", r)
	}
	if len(filter.LocalPorts) != 2 || filter.LocalPorts[0] != 443 || filter.Family != probe.AFInet6 {
		t.Errorf("filter: %+v", filter)
	}
	if poll >= 0 || maxTracked != 100 {
		t.Errorf("tracer: poll %v max %d; want off (negative) and 100", poll, maxTracked)
	}
}

// deploy/tcpfsm.yml parses, validates, shows every key, and documents each
// key's flag.
func TestExampleConfig(t *testing.T) {
	// It is written from the settings' descriptions.
	var b strings.Builder
	if err := writeExampleConfig(&b); err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(deployFile(t, "tcpfsm.yml"), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data := readDeploy(t, "tcpfsm.yml")
	r, help, err := parseAgentConfig([]string{"--config.file", deployFile(t, "tcpfsm.yml")}, nil)
	if err != nil || help {
		t.Fatalf("deploy/tcpfsm.yml: %v", err)
	}
	if string(data) != b.String() {
		t.Errorf("deploy/tcpfsm.yml differs from the settings' descriptions (go test ./cmd/tcpfsm -run TestExampleConfig -update):\n%s", b.String())
	}
	// It shows the defaults: an operator reads them there.
	want, _, _ := parseAgentConfig(nil, nil)
	if !reflect.DeepEqual(r, want) {
		t.Errorf("deploy/tcpfsm.yml resolves to\n%+v\nthe defaults are\n%+v", r, want)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		t.Fatal(err)
	}
	present := map[string]bool{}
	for _, p := range yamlKeyPaths(&root) {
		present[p.path] = true
	}
	for _, k := range configKeys() {
		if !present[k] {
			t.Errorf("deploy/tcpfsm.yml lacks key %s", k)
		}
		flag := configFlags[k]
		if !strings.Contains(string(data), "("+flag) {
			t.Errorf("deploy/tcpfsm.yml does not name %s's flag %s", k, flag)
		}
	}
	// Every key is commented: a comment line right above it, or on it.
	lines := strings.Split(string(data), "\n")
	for _, p := range yamlKeyPaths(&root) {
		i := p.line - 1
		if !strings.Contains(lines[i], "#") && (i == 0 || !strings.HasPrefix(strings.TrimSpace(lines[i-1]), "#")) &&
			strings.Contains(p.path, ".") {
			t.Errorf("deploy/tcpfsm.yml line %d (%s) has no comment", p.line, p.path)
		}
	}
}

// keyPath is a key of a YAML document, dotted, and its line.
type keyPath struct {
	path string
	line int
}

// yamlKeyPaths lists every mapping key of a parsed document, parents
// before children, and the lines of sequence items under the sequence's key.
func yamlKeyPaths(root *yaml.Node) []keyPath {
	var out []keyPath
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, prefix)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if prefix != "" {
					p = prefix + "." + p
				}
				out = append(out, keyPath{p, k.Line})
				walk(v, p)
			}
		case yaml.SequenceNode:
			for _, c := range n.Content {
				if prefix != "" {
					out = append(out, keyPath{prefix, c.Line})
				}
				walk(c, prefix)
			}
		}
	}
	walk(root, "")
	return out
}
