package main

// Every numeric setting of every command, from its description: values
// out of its range exit 2 with one line naming the flag (and, for the
// agent, the key, as a flag and in the file with its line); values at its
// ends and its default are accepted, and for the agent the tracer's own
// checks accept them too, so nothing the command takes fails at load.

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/settings"
)

// commandsUnderTest are every command's settings, bound to throwaway
// configurations.
func commandsUnderTest() []settings.Command {
	var a agentConfig
	return []settings.Command{
		traceCommand(&traceConfig{}), lifeCommand(&lifeConfig{}), recordCommand(&recordConfig{}),
		replayCommand(&replayConfig{}), agentCommand(&a), topCommand(&topConfig{}),
	}
}

// samples are a numeric setting's values out of its range and within it,
// as flag text; ok is false for a setting without a range.
func samples(s settings.Setting) (bad, good []string, ok bool) {
	switch s := s.(type) {
	case *settings.Int:
		if s.Min-1 != 0 || s.Zero == "" {
			bad = append(bad, strconv.FormatInt(s.Min-1, 10))
		}
		bad = append(bad, strconv.FormatInt(math.MinInt64, 10), "1099511627776000000000", "12abc")
		if s.Max != 0 {
			bad = append(bad, strconv.FormatInt(s.Max+1, 10), strconv.FormatInt(s.Max*2, 10), strconv.FormatInt(s.Max+1<<32, 10))
		}
		good = append(good, strconv.FormatInt(s.Min, 10))
		if s.Max != 0 {
			good = append(good, strconv.FormatInt(s.Max, 10))
		}
		if s.Zero != "" {
			good = append(good, "0")
		}
		if s.Default >= s.Min && (s.Max == 0 || s.Default <= s.Max) {
			good = append(good, strconv.FormatInt(s.Default, 10))
		}
		return bad, good, true
	case *settings.Duration:
		if s.Min-1 != 0 || s.Zero == "" {
			bad = append(bad, (s.Min - 1).String())
		}
		bad = append(bad, "-1s", "5")
		if s.Max != 0 {
			bad = append(bad, (s.Max + 1).String(), (s.Max * 1000).String())
		}
		good = append(good, s.Min.String())
		if s.Max != 0 {
			good = append(good, s.Max.String())
		}
		if s.Zero != "" {
			good = append(good, "0")
		}
		return bad, good, true
	case *settings.Float:
		bad = append(bad, "NaN", "Inf", strconv.FormatFloat(s.Max+0.001, 'g', -1, 64), "half")
		if s.MinOpen {
			bad = append(bad, strconv.FormatFloat(s.Min, 'g', -1, 64))
		} else {
			bad = append(bad, strconv.FormatFloat(s.Min-0.001, 'g', -1, 64))
		}
		good = append(good, strconv.FormatFloat(s.Max, 'g', -1, 64), strconv.FormatFloat((s.Min+s.Max)/2, 'g', -1, 64))
		return bad, good, true
	}
	return nil, nil, false
}

func TestSettingsRanges(t *testing.T) {
	dir := t.TempDir()
	numeric := 0
	for _, c := range commandsUnderTest() {
		keyed := c.ConfigFlag != ""
		for _, s := range c.Settings {
			bad, good, ok := samples(s)
			if !ok {
				continue
			}
			numeric++
			sp := settings.SpecOf(s)
			flag := "--" + sp.Flag
			name := settings.Name(s, keyed)
			for _, v := range bad {
				what := fmt.Sprintf("%s %s=%s", c.Name, flag, v)
				code, stdout, stderr := runCLI(c.Name, flag+"="+v)
				checkOneLine(t, what, code, stdout, stderr, "invalid "+name, flag)
				if keyed && sp.Key != "" {
					file := writeFile(t, dir, "bad.yml", yamlFor(sp.Key, v))
					code, stdout, stderr := runCLI(c.Name, "--config.file", file)
					line := strings.Count(yamlFor(sp.Key, v), "\n")
					checkOneLine(t, "YAML "+what, code, stdout, stderr, sp.Key, flag, fmt.Sprintf("line %d", line))
				}
			}
			for _, v := range good {
				fresh := freshCommand(c.Name)
				if _, err := settings.New(fresh).Parse([]string{flag + "=" + v}); err != nil {
					t.Errorf("%s %s=%s: %v", c.Name, flag, v, err)
				}
				if keyed {
					// The tracer's own checks take what the command does.
					if _, _, err := parseAgentConfig([]string{flag + "=" + v}, nil); err != nil {
						t.Errorf("agent %s=%s: %v", flag, v, err)
					}
				}
			}
		}
	}
	if numeric < 15 {
		t.Errorf("only %d numeric settings walked", numeric)
	}
}

func freshCommand(name string) settings.Command {
	for _, c := range commandsUnderTest() {
		if c.Name == name {
			return c
		}
	}
	panic(name)
}

func checkOneLine(t *testing.T, what string, code int, stdout, stderr string, wants ...string) {
	t.Helper()
	if code != exitUsage {
		t.Errorf("%s: exit %d, want %d; stderr %q", what, code, exitUsage, stderr)
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

// The tracer refuses, on its own, the values the descriptions keep out
// above their ranges: a description wider than the package's limit would
// fail here, not at load.
func TestSettingsLimitsAgreeWithTracer(t *testing.T) {
	var o agentConfig
	checked := 0
	for _, s := range agentSettings(&o) {
		var apply func() error
		switch s := s.(type) {
		case *settings.Int:
			apply = func() error { return s.To(s.Max + 1) }
		case *settings.Duration:
			apply = func() error { return s.To(s.Max + 1) }
		default:
			continue
		}
		o = agentConfig{}
		before := o.session
		if err := apply(); err != nil {
			continue
		}
		if reflect.DeepEqual(before, o.session) {
			continue // not the tracer's
		}
		checked++
		if err := o.session.Validate(); err == nil {
			t.Errorf("%s: the tracer takes %+v, above the setting's range", settings.SpecOf(s).Key, o.session)
		}
	}
	if checked < 4 {
		t.Errorf("only %d tracer settings checked", checked)
	}
}

// A multi-document file is an error naming the second document's line.
func TestAgentConfigOneDocument(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		content string
		line    int
	}{
		{"tracer:\n  max_tracked: 10\n---\ntracer:\n  bogus: 1\n", 3},
		{"---\nlogs:\n  sample: 0.5\n---\n\nlogs:\n  sample: 1\n", 4},
		{"web: {}\n---\n", 2},
	} {
		file := writeFile(t, dir, "multi.yml", tc.content)
		checkUsage(t, "YAML "+tc.content, []string{"--config.file", file}, "second YAML document", fmt.Sprintf("line %d", tc.line))
	}
}

// The filters are the same for every command: one parser, one rule.
func TestFiltersShared(t *testing.T) {
	for _, cmd := range []string{"trace", "life", "record", "replay", "agent", "top"} {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"-p", "0"}, "--pid"},
			{[]string{"-4", "-6"}, "-4 and -6 exclude each other"},
			{[]string{"--family", "ipv4", "-6"}, "--family and -6 exclude each other"},
			{[]string{"--family", "inet"}, "--family"},
			{[]string{"-L", "0"}, `--lport`},
			{[]string{"-D", "x"}, `--rport`},
			{[]string{"--netns", "0"}, "--netns"},
			{[]string{"--cgroup", "/etc"}, "--cgroup"},
		} {
			code, stdout, stderr := runCLI(append([]string{cmd}, tc.args...)...)
			checkOneLine(t, fmt.Sprintf("%s %v", cmd, tc.args), code, stdout, stderr, tc.want)
		}
	}
	// -4 and --family ipv4 are the same filter; 0 is no pid.
	for _, args := range [][]string{{"-4"}, {"--ipv4"}, {"--family", "ipv4"}, {"-4", "--family=ipv4"}} {
		cfg, _, err := parseTrace(args, nil)
		if err != nil || cfg.sel.kernel.Family != 2 {
			t.Errorf("%v: family %d, %v", args, cfg.sel.kernel.Family, err)
		}
		a, _, err := parseAgentConfig(args, nil)
		if err != nil || a.session.Probe.Filter.Family != 2 {
			t.Errorf("agent %v: family %d, %v", args, a.session.Probe.Filter.Family, err)
		}
	}
	dir := t.TempDir()
	for _, content := range []string{"filter:\n  pid: null\n", "filter:\n  pid:\n", "filter: {}\n"} {
		a, _, err := parseAgentConfig([]string{"--config.file", writeFile(t, dir, "c.yml", content)}, nil)
		if err != nil || a.session.Probe.Filter.PID != 0 {
			t.Errorf("%q: pid %d, %v", content, a.session.Probe.Filter.PID, err)
		}
	}
	checkUsage(t, "pid: 0", []string{"--config.file", writeFile(t, dir, "c.yml", "filter:\n  pid: 0\n")}, "filter.pid (--pid) 0", "line 2")
}
