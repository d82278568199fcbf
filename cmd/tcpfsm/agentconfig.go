package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/exporter-toolkit/web"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/tcpfsm/tcpfsm/exporter/metrics"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// agentConfig is the agent's configuration: the YAML file's layout, which
// flags override.
type agentConfig struct {
	Web struct {
		ListenAddress string `yaml:"listen_address"`
		ConfigFile    string `yaml:"config_file"`
	} `yaml:"web"`
	Metrics struct {
		Labels      []string `yaml:"labels"`
		LabelLimit  int      `yaml:"label_limit"`
		NoExemplars bool     `yaml:"no_exemplars"`
		BPFStats    bool     `yaml:"bpf_stats"`
	} `yaml:"metrics"`
	Logs struct {
		File        string  `yaml:"file"`
		Transitions bool    `yaml:"transitions"`
		Sample      float64 `yaml:"sample"`
	} `yaml:"logs"`
	Filter struct {
		PID         int64    `yaml:"pid"`
		LocalPorts  []string `yaml:"local_ports"`
		RemotePorts []string `yaml:"remote_ports"`
		Family      string   `yaml:"family"`
		NetNS       string   `yaml:"netns"`
		Cgroup      string   `yaml:"cgroup"`
	} `yaml:"filter"`
	Tracer struct {
		Attach          string        `yaml:"attach"`
		MaxTracked      int           `yaml:"max_tracked"`
		KernelTable     int           `yaml:"kernel_table"`
		RingBufferBytes int           `yaml:"ring_buffer_bytes"`
		TimeWaitPoll    time.Duration `yaml:"time_wait_poll"`
	} `yaml:"tracer"`
}

func defaultAgentConfig() agentConfig {
	var c agentConfig
	c.Web.ListenAddress = ":9465"
	c.Metrics.LabelLimit = 20
	c.Logs.File = "-"
	c.Logs.Sample = 1
	c.Tracer.Attach = string(probe.AttachAuto)
	c.Tracer.MaxTracked = 262144
	c.Tracer.KernelTable = 65536
	c.Tracer.RingBufferBytes = 8 << 20
	c.Tracer.TimeWaitPoll = time.Second
	return c
}

// configFlags names each YAML key's flag, for messages that name a field
// whichever way it was given.
var configFlags = map[string]string{
	"web.listen_address":       "--web.listen-address",
	"web.config_file":          "--web.config.file",
	"metrics.labels":           "--metrics.labels",
	"metrics.label_limit":      "--metrics.label-limit",
	"metrics.no_exemplars":     "--metrics.no-exemplars",
	"metrics.bpf_stats":        "--metrics.bpf-stats",
	"logs.file":                "--log.file",
	"logs.transitions":         "--log.transitions",
	"logs.sample":              "--log.sample",
	"filter.pid":               "--pid",
	"filter.local_ports":       "--lport",
	"filter.remote_ports":      "--rport",
	"filter.family":            "--family",
	"filter.netns":             "--netns",
	"filter.cgroup":            "--cgroup",
	"tracer.attach":            "--attach",
	"tracer.max_tracked":       "--max-tracked",
	"tracer.kernel_table":      "--kernel-table",
	"tracer.ring_buffer_bytes": "--ring-buffer-bytes",
	"tracer.time_wait_poll":    "--time-wait-poll",
}

// fieldName is a key as messages name it: "filter.pid (--pid)".
func fieldName(key string) string {
	if f, ok := configFlags[key]; ok {
		return key + " (" + f + ")"
	}
	return key
}

// oneLine folds a message onto one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// loadConfigFile reads the YAML file over the defaults; unknown keys are
// errors, so a typo does not silently keep a default. An error names the
// key it is about, dotted, and its line.
func loadConfigFile(path string, c *agentConfig) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return usagef("--config.file: %v", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err = dec.Decode(c)
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return usagef("config %s: %s", path, oneLine(err.Error()))
	}
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root)
	keys := yamlKeyPaths(&root)
	msgs := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		msgs = append(msgs, explainYAMLError(e, keys))
	}
	return usagef("config %s: %s", path, oneLine(strings.Join(msgs, "; ")))
}

var (
	// yamlLine is the "line N: " yaml.v3 starts its messages with.
	yamlLine = regexp.MustCompile(`^line (\d+): (.*)$`)
	// unknownField is yaml's "field X not found in type struct {...}".
	unknownField = regexp.MustCompile(`^field (\S+) not found in type .*$`)
	// intoStruct is the Go type yaml names when a mapping was expected.
	intoStruct = regexp.MustCompile(`into struct \{.*$`)
)

// explainYAMLError rewrites one of yaml.v3's decoding errors to name the
// dotted key it is about: "line 3: cannot unmarshal !!str `x` into int"
// becomes "metrics.label_limit (--metrics.label-limit): cannot unmarshal
// !!str `x` into int (line 3)".
func explainYAMLError(e string, keys []keyPath) string {
	m := yamlLine.FindStringSubmatch(e)
	if m == nil {
		return e
	}
	line, _ := strconv.Atoi(m[1])
	what := m[2]
	if u := unknownField.FindStringSubmatch(what); u != nil {
		key := u[1]
		for _, k := range keys {
			if k.line == line && (k.path == u[1] || strings.HasSuffix(k.path, "."+u[1])) {
				key = k.path
			}
		}
		return fmt.Sprintf("%s: unknown key (line %d)", key, line)
	}
	what = intoStruct.ReplaceAllString(what, "into a mapping of keys")
	key := ""
	for _, k := range keys {
		if k.line == line {
			key = k.path // the deepest key on the line
		}
	}
	if key == "" {
		return fmt.Sprintf("line %d: %s", line, what)
	}
	return fmt.Sprintf("%s: %s (line %d)", fieldName(key), what, line)
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

// resolved is the validated configuration the agent runs with.
type resolved struct {
	listen       string
	webConfig    string
	labels       []metrics.Label
	labelLimit   int
	noExemplars  bool
	bpfStats     bool
	logFile      string
	transitions  bool
	sample       float64
	filter       probe.Filter
	netnsPath    string
	attach       probe.Attach
	maxTracked   int
	kernelTable  int
	ringBuffer   int
	timeWaitPoll time.Duration
}

// validate checks every field and names the one that is wrong.
func (c *agentConfig) validate() (resolved, error) {
	var r resolved
	fail := func(field, format string, args ...any) (resolved, error) {
		return r, usagef("config: %s: %s", fieldName(field), oneLine(fmt.Sprintf(format, args...)))
	}
	if _, _, err := net.SplitHostPort(c.Web.ListenAddress); err != nil {
		return fail("web.listen_address", "%q is not host:port", c.Web.ListenAddress)
	}
	r.listen = c.Web.ListenAddress
	if c.Web.ConfigFile != "" {
		if err := web.Validate(c.Web.ConfigFile); err != nil {
			return fail("web.config_file", "%v", err)
		}
		r.webConfig = c.Web.ConfigFile
	}
	seen := map[metrics.Label]bool{}
	for _, s := range c.Metrics.Labels {
		l, ok := metrics.ParseLabel(strings.TrimSpace(s))
		if !ok {
			return fail("metrics.labels", "unknown label %q (want port, comm or container; never pid, addresses or ephemeral ports)", s)
		}
		if seen[l] {
			return fail("metrics.labels", "label %q given twice", s)
		}
		seen[l] = true
		r.labels = append(r.labels, l)
	}
	if c.Metrics.LabelLimit < 1 || c.Metrics.LabelLimit > 1000 {
		return fail("metrics.label_limit", "%d: want 1 to 1000 values per label", c.Metrics.LabelLimit)
	}
	r.labelLimit, r.noExemplars, r.bpfStats = c.Metrics.LabelLimit, c.Metrics.NoExemplars, c.Metrics.BPFStats
	if c.Logs.File == "" {
		return fail("logs.file", "empty: want a path, or - for stdout")
	}
	r.logFile, r.transitions = c.Logs.File, c.Logs.Transitions
	if !(c.Logs.Sample > 0 && c.Logs.Sample <= 1) {
		return fail("logs.sample", "%v: want a fraction above 0, at most 1", c.Logs.Sample)
	}
	r.sample = c.Logs.Sample

	f := c.Filter
	if f.PID < 0 || f.PID > 1<<32-1 {
		return fail("filter.pid", "%d is no process id", f.PID)
	}
	r.filter.PID = uint32(f.PID)
	var err error
	if r.filter.LocalPorts, err = parsePorts(fieldName("filter.local_ports"), f.LocalPorts); err != nil {
		return r, usagef("config: %v", err)
	}
	if r.filter.RemotePorts, err = parsePorts(fieldName("filter.remote_ports"), f.RemotePorts); err != nil {
		return r, usagef("config: %v", err)
	}
	switch f.Family {
	case "":
	case "ipv4":
		r.filter.Family = probe.AFInet
	case "ipv6":
		r.filter.Family = probe.AFInet6
	default:
		return fail("filter.family", "%q: want ipv4 or ipv6", f.Family)
	}
	if f.NetNS != "" {
		if r.filter.NetNS, err = probe.NetNSInode(f.NetNS); err != nil {
			return fail("filter.netns", "%v", err)
		}
		if path, err := probe.NetNSPath(f.NetNS); err == nil {
			r.netnsPath = path
		}
	}
	if f.Cgroup != "" {
		if r.filter.CgroupID, r.filter.CgroupLevel, err = probe.CgroupFilter(f.Cgroup); err != nil {
			return fail("filter.cgroup", "%v", err)
		}
	}

	t := c.Tracer
	if r.attach, err = probe.ParseAttach(t.Attach); err != nil {
		return fail("tracer.attach", "%v", err)
	}
	if t.MaxTracked < 1 {
		return fail("tracer.max_tracked", "%d: want at least 1", t.MaxTracked)
	}
	r.maxTracked = t.MaxTracked
	if t.KernelTable < 64 || t.KernelTable > 1<<22 {
		return fail("tracer.kernel_table", "%d: want 64 to %d open sockets", t.KernelTable, 1<<22)
	}
	r.kernelTable = t.KernelTable
	page := os.Getpagesize()
	if rb := t.RingBufferBytes; rb < page || rb&(rb-1) != 0 {
		return fail("tracer.ring_buffer_bytes", "%d: want a power of two of at least %d", rb, page)
	}
	r.ringBuffer = t.RingBufferBytes
	if t.TimeWaitPoll < 0 || t.TimeWaitPoll > 0 && t.TimeWaitPoll < 100*time.Millisecond {
		return fail("tracer.time_wait_poll", "%s: want 0 (off) or at least 100ms", t.TimeWaitPoll)
	}
	r.timeWaitPoll = t.TimeWaitPoll
	if r.timeWaitPoll == 0 {
		r.timeWaitPoll = -1 // off, for the session
	}
	return r, nil
}

// agentFlags registers the flags that override the file.
func agentFlags(fs *pflag.FlagSet, c *agentConfig, configFile *string) {
	fs.StringVar(configFile, "config.file", "", "read the configuration from this YAML `FILE` (deploy/tcpfsm.yml shows every key); flags override it")
	fs.StringVar(&c.Web.ListenAddress, "web.listen-address", c.Web.ListenAddress, "serve /metrics, /healthz and /readyz on this `ADDRESS` (e.g. --web.listen-address 127.0.0.1:9465)")
	fs.StringVar(&c.Web.ConfigFile, "web.config.file", c.Web.ConfigFile, "exporter-toolkit web configuration `FILE` for TLS and basic auth")
	fs.StringSliceVar(&c.Metrics.Labels, "metrics.labels", c.Metrics.Labels, "optional `LABELS` on connection metrics: port, comm, container (e.g. --metrics.labels port,container)")
	fs.IntVar(&c.Metrics.LabelLimit, "metrics.label-limit", c.Metrics.LabelLimit, "distinct values per optional label; the rest count as \"other\" (`N`)")
	fs.BoolVar(&c.Metrics.NoExemplars, "metrics.no-exemplars", c.Metrics.NoExemplars, "no connection-id exemplars on the duration histograms")
	fs.BoolVar(&c.Metrics.BPFStats, "metrics.bpf-stats", c.Metrics.BPFStats, "turn on the kernel's BPF run-time statistics while the agent runs (needs CAP_SYS_ADMIN)")
	fs.StringVar(&c.Logs.File, "log.file", c.Logs.File, "write connection records to `FILE` (- for stdout)")
	fs.BoolVar(&c.Logs.Transitions, "log.transitions", c.Logs.Transitions, "also log every state transition")
	fs.Float64Var(&c.Logs.Sample, "log.sample", c.Logs.Sample, "log this `FRACTION` of connection records, chosen by connection id (e.g. --log.sample 0.01)")
	fs.Int64VarP(&c.Filter.PID, "pid", "p", c.Filter.PID, "only connections owned by process `PID`")
	fs.StringSliceVarP(&c.Filter.LocalPorts, "lport", "L", c.Filter.LocalPorts, "only these local `PORTS`")
	fs.StringSliceVarP(&c.Filter.RemotePorts, "rport", "D", c.Filter.RemotePorts, "only these remote `PORTS`")
	fs.StringVar(&c.Filter.Family, "family", c.Filter.Family, "only `ipv4` or ipv6")
	fs.StringVar(&c.Filter.NetNS, "netns", c.Filter.NetNS, "only this network namespace `NS` (inode, name or path)")
	fs.StringVar(&c.Filter.Cgroup, "cgroup", c.Filter.Cgroup, "only owners inside this cgroup v2 `PATH`")
	fs.StringVar(&c.Tracer.Attach, "attach", c.Tracer.Attach, "`HOOK`: auto, raw_tracepoint or tracepoint")
	fs.IntVar(&c.Tracer.MaxTracked, "max-tracked", c.Tracer.MaxTracked, "connection records held at most (`N`)")
	fs.IntVar(&c.Tracer.KernelTable, "kernel-table", c.Tracer.KernelTable, "open sockets the kernel side remembers owners for (`N`; preallocated, about 136 bytes each)")
	fs.IntVar(&c.Tracer.RingBufferBytes, "ring-buffer-bytes", c.Tracer.RingBufferBytes, "ring buffer size, a power of two (`BYTES`)")
	fs.DurationVar(&c.Tracer.TimeWaitPoll, "time-wait-poll", c.Tracer.TimeWaitPoll, "how often sock_diag looks for ended TIME_WAITs (`DURATION`, 0 off)")
}

// parseAgentConfig reads the file named by --config.file, then lets the
// flags given override it.
func parseAgentConfig(args []string, usage io.Writer) (resolved, bool, error) {
	// First pass: only the file's name.
	var file string
	pre := newFlagSet("agent")
	pre.ParseErrorsAllowlist.UnknownFlags = true
	pre.StringVar(&file, "config.file", "", "")
	pre.BoolP("help", "h", false, "")
	_ = pre.Parse(args)

	c := defaultAgentConfig()
	if file != "" {
		if err := loadConfigFile(file, &c); err != nil {
			return resolved{}, false, err
		}
	}
	fs := newFlagSet("agent")
	agentFlags(fs, &c, &file)
	help, err := parseFlags(fs, args)
	if err != nil || help {
		if help {
			printUsage(usage, fs, agentSynopsis, agentExamples)
		}
		return resolved{}, help, err
	}
	r, err := c.validate()
	return r, false, err
}
