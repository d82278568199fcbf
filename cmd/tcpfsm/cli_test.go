package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestMain(m *testing.M) {
	nettest.RunHelperIfAsked()
	os.Exit(m.Run())
}

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

const (
	mixRecording = "../../tracer/testdata/loopback-mix.rec"
	k8sRecording = "../../tracer/testdata/k8s-mix.rec"
)

func scenarioFile(name string) string { return "../../tracer/testdata/scenarios/" + name + ".rec" }

// Every bad flag value: exit 2 and one line naming the flag.
func TestBadFlags(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{}, ""},
		{[]string{"nosuch"}, `unknown command "nosuch"`},
		{[]string{"trace", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"trace", "-p", "abc"}, "--pid"},
		{[]string{"trace", "-p", "0"}, "invalid --pid 0"},
		{[]string{"trace", "-p", "-3"}, "invalid --pid -3"},
		{[]string{"trace", "-p", "99999999999"}, "invalid --pid"},
		{[]string{"trace", "-L", "0"}, `invalid --lport "0"`},
		{[]string{"trace", "-L", "80,x"}, `invalid --lport "x"`},
		{[]string{"trace", "-D", "65536"}, `invalid --rport "65536"`},
		{[]string{"trace", "-4", "-6"}, "-4 and -6 exclude each other"},
		{[]string{"trace", "--netns", "no-such-ns"}, "invalid --netns"},
		{[]string{"trace", "--netns", "0"}, "invalid --netns"},
		{[]string{"trace", "--cgroup", "no/such/cgroup"}, "invalid --cgroup"},
		{[]string{"trace", "--state", "FIN_WAIT3"}, "invalid --state"},
		{[]string{"trace", "--state", "TIME_WAIT"}, "never reports"},
		{[]string{"trace", "-o", "xml"}, `invalid --output "xml"`},
		{[]string{"trace", "-d", "0s"}, "invalid --duration 0s"},
		{[]string{"trace", "-d", "3"}, "--duration"},
		{[]string{"trace", "-n", "0"}, "invalid --count 0"},
		{[]string{"trace", "-n", "-1"}, "invalid --count -1"},
		{[]string{"trace", "--attach", "kprobe"}, "invalid --attach"},
		{[]string{"trace", "extra"}, `unexpected argument "extra"`},
		{[]string{"record"}, "--write FILE is required"},
		{[]string{"record", "-w", "/tmp/x", "--state", "CLOSE"}, "select at replay time"},
		{[]string{"replay"}, "want exactly one recording FILE"},
		{[]string{"replay", "a", "b"}, "want exactly one recording FILE"},
		{[]string{"replay", "-o", "yaml", mixRecording}, `invalid --output "yaml"`},
		{[]string{"version", "x"}, "no arguments"},
		{[]string{"replay", "--view", "graph", mixRecording}, `invalid --view "graph"`},
		{[]string{"replay", "--view", "ladder", "-o", "json", mixRecording}, "excludes -o json"},
		{[]string{"replay", "--ladder", mixRecording}, "apply to --view life"},
		{[]string{"life", "--ladder", "-o", "json"}, "excludes -o json"},
		{[]string{"life", "--max-tracked", "0"}, "invalid --max-tracked 0"},
		{[]string{"life", "-n", "0"}, "invalid --count 0"},
		{[]string{"life", "-d", "-5s"}, "invalid --duration"},
		{[]string{"life", "--attach", "x"}, "invalid --attach"},
		{[]string{"life", "-o", "csv"}, `invalid --output "csv"`},
		{[]string{"life", "-L", "70000"}, `invalid --lport "70000"`},
		{[]string{"life", "--state", "NOPE"}, "invalid --state"},
		{[]string{"life", "--netns", "/nonexistent"}, "invalid --netns"},
		{[]string{"record", "-w", "/tmp/x", "-d", "0"}, "invalid --duration"},
		{[]string{"record", "-w", "/tmp/x", "-n", "-2"}, "invalid --count -2"},
		{[]string{"record", "-w", "/tmp/x", "--attach", "kprobe"}, "invalid --attach"},
		{[]string{"record", "-w", "/tmp/x", "-p", "0"}, "invalid --pid 0"},
		{[]string{"replay", "-n", "0", mixRecording}, "invalid --count 0"},
		{[]string{"replay", "-D", "abc", mixRecording}, `invalid --rport "abc"`},
		{[]string{"agent", "--web.listen-address", "nocolon"}, "web.listen_address"},
		{[]string{"agent", "--max-tracked", "0"}, "tracer.max_tracked"},
		{[]string{"agent", "--ring-buffer-bytes", "1000"}, "tracer.ring_buffer_bytes"},
		{[]string{"agent", "--time-wait-poll", "1ms"}, "tracer.time_wait_poll"},
		{[]string{"agent", "--log.file", ""}, "logs.file"},
		{[]string{"agent", "--family", "ipx"}, "filter.family"},
		{[]string{"agent", "-L", "0"}, "filter.local_ports"},
		{[]string{"agent", "--metrics.label-limit", "0"}, "metrics.label_limit"},
		{[]string{"agent", "--web.config.file", "/nonexistent.yml"}, "web.config_file"},
		{[]string{"agent", "--config.file", "/nonexistent.yml"}, "--config.file"},
	}
	for _, tc := range cases {
		code, stdout, stderr := runCLI(tc.args...)
		if code != exitUsage {
			t.Errorf("%q: exit %d, want %d (stderr %q)", tc.args, code, exitUsage, stderr)
		}
		if stdout != "" && len(tc.args) > 0 {
			t.Errorf("%q: wrote to stdout: %q", tc.args, stdout)
		}
		if !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: stderr %q does not say %q", tc.args, stderr, tc.want)
		}
		if len(tc.args) > 0 && strings.Count(stderr, "\n") != 1 {
			t.Errorf("%q: want one line, got %q", tc.args, stderr)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, cmd := range []string{"trace", "life", "record", "replay"} {
		code, stdout, _ := runCLI(cmd, "--help")
		if code != exitOK {
			t.Errorf("%s --help: exit %d", cmd, code)
		}
		if !strings.Contains(stdout, "Usage: tcpfsm "+cmd) || !strings.Contains(stdout, "Examples:") {
			t.Errorf("%s --help lacks usage or examples:\n%s", cmd, stdout)
		}
	}
	code, stdout, _ := runCLI("trace", "--help")
	if code != exitOK {
		t.Errorf("trace --help: exit %d", code)
	}
	// Every flag the issue asks for is documented with an example.
	for _, f := range []string{"--pid", "--comm", "--lport", "--rport", "--ipv4", "--ipv6", "--netns", "--state", "--output", "--duration", "--count"} {
		line := ""
		for _, l := range strings.Split(stdout, "\n") {
			if strings.Contains(l, f+" ") {
				line = l
			}
		}
		if line == "" {
			t.Errorf("trace --help does not document %s", f)
		}
	}
	if code, stdout, _ = runCLI("--help"); code != exitOK || !strings.Contains(stdout, "trace") {
		t.Errorf("top-level help: exit %d\n%s", code, stdout)
	}
}

func TestParseTraceFlags(t *testing.T) {
	cfg, help, err := parseTrace([]string{"-p", "42", "--comm", "a-very-long-command-name", "-L", "80,443", "-L", "8080",
		"-D", "5432", "-6", "--state", "close,close-wait", "-o", "json", "-d", "90s", "-n", "7", "--attach", "tracepoint"}, nil)
	if err != nil || help {
		t.Fatal(err)
	}
	k := cfg.sel.kernel
	if k.PID != 42 || k.Family != probe.AFInet6 || len(k.LocalPorts) != 3 || k.LocalPorts[2] != 8080 ||
		len(k.RemotePorts) != 1 || k.RemotePorts[0] != 5432 {
		t.Errorf("kernel filter: %+v", k)
	}
	if cfg.sel.comm != "a-very-long-co" && cfg.sel.comm != "a-very-long-com" {
		t.Errorf("comm %q, want the 15 bytes the kernel keeps", cfg.sel.comm)
	}
	if !cfg.sel.states[probe.StateClose] || !cfg.sel.states[probe.StateCloseWait] || cfg.sel.states[probe.StateListen] {
		t.Errorf("states: %v", cfg.sel.states)
	}
	if cfg.output != outputJSON || cfg.duration.Seconds() != 90 || cfg.count != 7 || cfg.attach != probe.AttachTracepoint {
		t.Errorf("config: %+v", cfg)
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run with -update after checking):\n%s", path, got)
	}
}

// Replay needs no privileges and prints what trace printed live.
func TestReplayGolden(t *testing.T) {
	t.Setenv("TZ", "UTC")
	cases := []struct {
		name string
		args []string
		rows int
		read int // transitions read before stopping
	}{
		{"replay-table.txt", []string{"replay", mixRecording}, 33, 32},
		{"replay-json.jsonl", []string{"replay", "-o", "json", mixRecording}, 32, 32},
		{"replay-close-v6.txt", []string{"replay", "--state", "CLOSE", "-6", "--no-header", mixRecording}, 3, 32},
		{"replay-lport.txt", []string{"replay", "-L", "8080", "-n", "4", mixRecording}, 5, 7},
		{"replay-comm-none.txt", []string{"replay", "--comm", "curl", mixRecording}, 1, 32},
		{"life-client-first.jsonl", []string{"replay", "--view", "life", "-o", "json", scenarioFile("client-closes-first")}, 2, 12},
		{"life-all.txt", []string{"replay", "--view", "life", "--all", scenarioFile("listener-closed-with-queue")}, 6, 18},
		{"ladder-client-first.txt", []string{"replay", "--view", "ladder", scenarioFile("client-closes-first")}, 15, 12},
		{"ladder-simultaneous.txt", []string{"replay", "--view", "ladder", scenarioFile("simultaneous-close")}, 14, 12},
		{"ladder-refused-none.txt", []string{"replay", "--view", "ladder", scenarioFile("refused")}, 0, 3},
	}
	for _, tc := range cases {
		code, stdout, stderr := runCLI(tc.args...)
		if code != exitOK {
			t.Fatalf("%v: exit %d: %s", tc.args, code, stderr)
		}
		if n := strings.Count(stdout, "\n"); n != tc.rows {
			t.Errorf("%v: %d lines, want %d", tc.args, n, tc.rows)
		}
		golden(t, tc.name, stdout)
		if !strings.Contains(stderr, fmt.Sprintf("%d events read", tc.read)) || !strings.Contains(stderr, "0 lost") {
			t.Errorf("%v: summary %q", tc.args, stderr)
		}
	}
	// JSON lines are JSON.
	_, stdout, _ := runCLI("replay", "-o", "json", mixRecording)
	for i, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
	}
}

// A corrupt or cut recording: an error naming the offset, exit 1, and
// everything before the damage still printed.
func TestReplayCorrupt(t *testing.T) {
	data, err := os.ReadFile(mixRecording)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cut := write("cut.rec", data[:len(data)-50])
	flipped := bytes.Clone(data)
	flipped[len(flipped)-300] ^= 1
	flip := write("flip.rec", flipped)
	notRec := write("text.rec", []byte("hello, this is not a recording at all\n"))

	for _, tc := range []struct {
		path, want string
		minRows    int
	}{
		{cut, "truncated record", 30},
		{flip, "checksum mismatch", 28},
		{notRec, "offset 0: not a tcpfsm recording", 0},
		{filepath.Join(dir, "missing.rec"), "no such file", 0},
	} {
		code, stdout, stderr := runCLI("replay", "--no-header", tc.path)
		if code != exitError {
			t.Errorf("%s: exit %d, want %d", tc.path, code, exitError)
		}
		if !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: stderr %q does not say %q", tc.path, stderr, tc.want)
		}
		if tc.minRows > 0 && !strings.Contains(stderr, "offset ") {
			t.Errorf("%s: error does not name the offset: %q", tc.path, stderr)
		}
		if n := strings.Count(stdout, "\n"); n < tc.minRows {
			t.Errorf("%s: %d rows printed before the damage, want at least %d", tc.path, n, tc.minRows)
		}
	}
}
