package main

import (
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/settings"
	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// parseCommand parses a command's flags; every bad one is a usage error.
// help is true when --help was asked for (then usage has the help).
// Arguments after the flags are left in the flag set.
func parseCommand(c settings.Command, args []string, usage io.Writer, synopsis, examples string) (fs *pflag.FlagSet, help bool, err error) {
	p := settings.New(c)
	help, err = p.Parse(args)
	if help {
		printUsage(usage, p.FlagSet(), synopsis, examples)
	}
	if err != nil {
		return nil, false, usagef("%v", err)
	}
	return p.FlagSet(), help, nil
}

// noArguments rejects arguments after the flags.
func noArguments(fs *pflag.FlagSet) error {
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func printUsage(w io.Writer, fs *pflag.FlagSet, synopsis, examples string) {
	fmt.Fprintf(w, "%s\nFlags:\n%s", synopsis, fs.FlagUsagesWrapped(100))
	if examples != "" {
		fmt.Fprintf(w, "\nExamples:\n%s", examples)
	}
}

// selection is what the filters resolve to.
type selection struct {
	kernel    probe.Filter
	netnsPath string   // --netns as a file, so sock_diag can enter it
	cgroup    string   // --cgroup as given, for filters applied elsewhere (top --agent)
	comm      string   // owner comm, exact, as the kernel truncates it
	states    [16]bool // wanted new states, when any is set
	any       bool     // states has an entry
	meta      metaFilter
	// cgroupPath is the cgroup filter's directory relative to the cgroup2
	// mount; live is set where the kernel applied the filter (to the
	// subtree), replay matches it in user space (the exact cgroup).
	cgroupPath string
	live       bool
}

// kernelFilters are the filters the kernel applies, the same for every
// command, each once: trace, life, record and replay take them as flags,
// the agent as flags and as the filter section of its file. The rule for
// all of them: a value given must select something; to select
// everything, leave the filter out (in the file: leave the key out, or
// null, or an empty list or string). So --pid 0 and pid: 0 are errors,
// never "every process".
func kernelFilters(s *selection) []settings.Setting {
	return []settings.Setting{
		&settings.Int{Spec: settings.Spec{Key: "filter.pid", Flag: "pid", Short: "p",
			Help: "only connections owned by process `PID` (e.g. -p 1234)",
			Doc:  "Only connections owned by this process id."},
			Min: 1, Max: math.MaxUint32, Unset: "every process",
			To: func(v int64) error { s.kernel.PID = uint32(v); return nil }},
		&settings.Strings{Spec: settings.Spec{Key: "filter.local_ports", Flag: "lport", Short: "L",
			Help: "only these local `PORTS`, comma-separated or repeated (e.g. -L 80,443)",
			Doc:  "Only connections with one of these local ports, 1-65535; empty: all. Example: [80, 443]"},
			Check: checkPort,
			To:    func(v []string) error { s.kernel.LocalPorts = ports(v); return nil }},
		&settings.Strings{Spec: settings.Spec{Key: "filter.remote_ports", Flag: "rport", Short: "D",
			Help: "only these remote `PORTS` (e.g. -D 5432 -D 6379)",
			Doc:  "Only connections with one of these remote ports; empty: all. Example: [5432]"},
			Check: checkPort,
			To:    func(v []string) error { s.kernel.RemotePorts = ports(v); return nil }},
		&settings.String{Spec: settings.Spec{Key: "filter.family", Flag: "family",
			Help: "only this address `FAMILY`: ipv4 (IPv4-mapped IPv6 counts as IPv4) or ipv6",
			Doc:  "Only ipv4 or ipv6 (IPv4-mapped IPv6 counts as ipv4); empty: both.",
			Also: []settings.Alias{
				{Flag: "ipv4", Short: "4", Value: "ipv4", Help: "only IPv4 (IPv4-mapped IPv6 counts as IPv4): --family ipv4"},
				{Flag: "ipv6", Short: "6", Value: "ipv6", Help: "only IPv6: --family ipv6"},
			}},
			Check: func(v string) error {
				if v != "" && v != "ipv4" && v != "ipv6" {
					return fmt.Errorf("want ipv4 or ipv6")
				}
				return nil
			},
			To: func(v string) error {
				s.kernel.Family = map[string]uint8{"ipv4": probe.AFInet, "ipv6": probe.AFInet6}[v]
				return nil
			}},
		&settings.String{Spec: settings.Spec{Key: "filter.netns", Flag: "netns",
			Help: "only this network namespace: an inode `NS`, a name under /run/netns or a path (e.g. --netns /proc/1234/ns/net)",
			Doc:  "Only this network namespace: an inode number, a name under /run/netns, or a path such as /proc/1234/ns/net; empty: every namespace."},
			To: func(v string) error {
				if v == "" {
					return nil
				}
				ino, err := probe.NetNSInode(v)
				if err != nil {
					return err
				}
				s.kernel.NetNS = ino
				if path, err := probe.NetNSPath(v); err == nil {
					s.netnsPath = path
				}
				return nil
			}},
		&settings.String{Spec: settings.Spec{Key: "filter.cgroup", Flag: "cgroup",
			Help: "only owners inside this cgroup v2 `PATH` or below (e.g. --cgroup system.slice/nginx.service)",
			Doc:  "Only connections owned by processes in this cgroup v2 directory or below, absolute or relative to the cgroup2 mount; empty: all. Example: system.slice/nginx.service"},
			To: func(v string) error {
				if v == "" {
					return nil
				}
				s.cgroup = v
				var err error
				s.kernel.CgroupID, s.kernel.CgroupLevel, err = probe.CgroupFilter(v)
				s.cgroupPath = cgroupRel(v)
				return err
			}},
		podFilter(s),
	}
}

// eventFilters are applied in user space, by the commands that print:
// the owner's command name and the states transitions go into.
func eventFilters(s *selection) []settings.Setting {
	return []settings.Setting{commFilter(s), stateFilter(s, false)}
}

func commFilter(s *selection) settings.Setting {
	return &settings.String{Spec: settings.Spec{Flag: "comm",
		Help: "only connections owned by a process with this command `NAME` (e.g. --comm nginx)"},
		To: func(v string) error {
			// The kernel keeps 15 bytes of a command name.
			s.comm = v[:min(len(v), 15)]
			return nil
		}}
}

// stateFilter is --state: the states transitions go into, or for top
// (current) the states connections are in now.
func stateFilter(s *selection, current bool) settings.Setting {
	help := "only transitions into these `STATES` (e.g. --state CLOSE,CLOSE_WAIT)"
	if current {
		help = "only connections now in these `STATES` (e.g. --state CLOSE_WAIT,FIN_WAIT2)"
	}
	return &settings.Strings{Spec: settings.Spec{Flag: "state", Help: help},
		Check: func(name string) error {
			st, err := probe.ParseState(name)
			if err != nil {
				return fmt.Errorf("%w (want e.g. ESTABLISHED, CLOSE_WAIT, CLOSE)", err)
			}
			switch {
			case current && (st == probe.StateClose || st == probe.StateNewSynRecv || st == probe.StateBoundInactive):
				return fmt.Errorf("no open connection is in %s (want e.g. ESTABLISHED, CLOSE_WAIT, TIME_WAIT)", st)
			case !current && (st == probe.StateTimeWait || st == probe.StateNewSynRecv):
				return fmt.Errorf("the kernel never reports a transition into %s", st)
			}
			return nil
		},
		To: func(v []string) error {
			for _, name := range v {
				st, _ := probe.ParseState(name)
				s.states[st] = true
				s.any = true
			}
			return nil
		}}
}

// filters are every filter, for the commands that print.
func filters(s *selection) []settings.Setting {
	return sliceOf(kernelFilters(s), eventFilters(s), metaFilters(s))
}

func checkPort(v string) error {
	if n, err := strconv.ParseUint(v, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("want a port from 1 to 65535")
	}
	return nil
}

// ports converts checked ports.
func ports(values []string) []uint16 {
	var out []uint16
	for _, v := range values {
		n, _ := strconv.ParseUint(v, 10, 16)
		out = append(out, uint16(n))
	}
	return out
}

// match applies the user-space part of the selection.
func (s *selection) match(e *probe.Event) bool {
	if s.any && !s.states[e.Newstate&15] {
		return false
	}
	if s.comm != "" && (!e.OwnerKnown() || string(e.CommBytes()) != s.comm) {
		return false
	}
	return true
}

// kernelMatch applies the kernel's part of the selection again in user
// space: for replays, and for records the kernel did not filter (the
// snapshot's). Live, the cgroup filter is the kernel's subtree match, so
// a record's cgroup is checked against the subtree, an event not at all
// (every event passed the kernel).
func (s *selection) kernelMatch(e *probe.Event, recordCgroup string, isRecord bool) bool {
	f := s.kernel
	if s.live && f.CgroupID != 0 {
		if isRecord && recordCgroup != s.cgroupPath && !strings.HasPrefix(recordCgroup, strings.TrimSuffix(s.cgroupPath, "/")+"/") {
			return false
		}
		f.CgroupID = 0
	}
	return f.Match(e)
}

// cgroupRel is a --cgroup value as a path below the cgroup2 mount.
func cgroupRel(v string) string {
	if root, err := cgroups.Mount(); err == nil && filepath.IsAbs(v) {
		if rel, err := filepath.Rel(root, v); err == nil && !strings.HasPrefix(rel, "..") {
			v = rel
		}
	}
	return filepath.Clean("/" + v)
}

// netnsPaths is the namespace --netns named, for the session's sock_diag.
func (s *selection) netnsPaths() map[uint32]string {
	if s.netnsPath == "" {
		return nil
	}
	return map[uint32]string{s.kernel.NetNS: s.netnsPath}
}

// attachSetting is the hook, for every command that loads the probe.
func attachSetting(a *probe.Attach) settings.Setting {
	return &settings.String{Spec: settings.Spec{Key: "tracer.attach", Flag: "attach",
		Help: "`HOOK` for inet_sock_set_state: auto, raw_tracepoint or tracepoint (e.g. --attach tracepoint)",
		Doc: "Hook: auto (the raw tracepoint, falling back to the classic one), raw_tracepoint (needs no " +
			"tracefs) or tracepoint (needs tracefs mounted, or CAP_SYS_ADMIN to mount it)."},
		Default: string(probe.AttachAuto),
		To: func(v string) error {
			var err error
			*a, err = probe.ParseAttach(v)
			return err
		}}
}

// maxTrackedSetting caps the builder, for life and the agent.
func maxTrackedSetting(c *lifecycle.Config) settings.Setting {
	return &settings.Int{Spec: settings.Spec{Key: "tracer.max_tracked", Flag: "max-tracked",
		Help: "track at most `N` connections at once, evicting the least recently active",
		Doc: "Connection records held at most; the least recently active is evicted beyond it " +
			"(tcpfsm_evictions_total{reason=\"cap\"}). About 250 bytes each in the agent for an open connection, more once it is in TIME_WAIT, plus the kernel's per-socket table."},
		Default: lifecycle.DefaultMaxTracked, Min: 1, Max: lifecycle.MaxMaxTracked,
		To: func(v int64) error { c.MaxTracked = int(v); return nil }}
}

// outputFormat is -o.
type outputFormat string

const (
	outputTable outputFormat = "table"
	outputJSON  outputFormat = "json"
)

func outputSetting(o *outputFormat, help string) settings.Setting {
	return &settings.String{Spec: settings.Spec{Flag: "output", Short: "o", Help: help},
		Default: string(outputTable),
		Check: func(v string) error {
			if v != string(outputTable) && v != string(outputJSON) {
				return fmt.Errorf("want table or json")
			}
			return nil
		},
		To: func(v string) error { *o = outputFormat(v); return nil }}
}

// durationSetting is -d, stopping after a time.
func durationSetting(d *time.Duration, example string) settings.Setting {
	return &settings.Duration{Spec: settings.Spec{Flag: "duration", Short: "d",
		Help: "stop after this `DURATION` (e.g. -d " + example + ")"},
		Min: 1, Unset: "no limit",
		To: func(v time.Duration) error { *d = v; return nil }}
}

// countSetting is -n, stopping after a number of things printed.
func countSetting(n *int, help string) settings.Setting {
	return &settings.Int{Spec: settings.Spec{Flag: "count", Short: "n", Help: help},
		Min: 1, Unset: "no limit",
		To: func(v int64) error { *n = int(v); return nil }}
}

func noHeaderSetting(b *bool) settings.Setting {
	return &settings.Bool{Spec: settings.Spec{Flag: "no-header", Help: "omit the table header"},
		To: func(v bool) error { *b = v; return nil }}
}

// sliceOf lists settings, for appending groups.
func sliceOf(groups ...[]settings.Setting) []settings.Setting {
	var out []settings.Setting
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}
