package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// newFlagSet returns a flag set that reports errors to its caller instead
// of printing them, so every bad flag becomes one line and exit 2.
func newFlagSet(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SortFlags = false
	return fs
}

// parseFlags parses args; help is true when --help was asked for.
func parseFlags(fs *pflag.FlagSet, args []string) (help bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return true, nil
		}
		return false, usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return false, usagef("unexpected argument %q", fs.Arg(0))
	}
	return false, nil
}

func printUsage(w io.Writer, fs *pflag.FlagSet, synopsis, examples string) {
	fmt.Fprintf(w, "%s\nFlags:\n%s", synopsis, fs.FlagUsagesWrapped(100))
	if examples != "" {
		fmt.Fprintf(w, "\nExamples:\n%s", examples)
	}
}

// filterFlags are the selection flags shared by the commands that read
// events. The kernel applies what it can; comm and state are applied in
// user space.
type filterFlags struct {
	fs     *pflag.FlagSet
	pid    int64
	comm   string
	lports []string
	rports []string
	ipv4   bool
	ipv6   bool
	netns  string
	cgroup string
	states []string
}

func (f *filterFlags) register(fs *pflag.FlagSet) {
	f.fs = fs
	fs.Int64VarP(&f.pid, "pid", "p", 0, "only connections owned by process `PID` (e.g. -p 1234)")
	fs.StringVar(&f.comm, "comm", "", "only connections owned by a process with this command `NAME` (e.g. --comm nginx)")
	fs.StringSliceVarP(&f.lports, "lport", "L", nil, "only these local `PORTS`, comma-separated or repeated (e.g. -L 80,443)")
	fs.StringSliceVarP(&f.rports, "rport", "D", nil, "only these remote `PORTS` (e.g. -D 5432 -D 6379)")
	fs.BoolVarP(&f.ipv4, "ipv4", "4", false, "only IPv4 (IPv4-mapped IPv6 counts as IPv4)")
	fs.BoolVarP(&f.ipv6, "ipv6", "6", false, "only IPv6")
	fs.StringVar(&f.netns, "netns", "", "only this network namespace: an inode `NS`, a name under /run/netns or a path (e.g. --netns /proc/1234/ns/net)")
	fs.StringVar(&f.cgroup, "cgroup", "", "only owners inside this cgroup v2 `PATH` or below (e.g. --cgroup system.slice/nginx.service)")
	fs.StringSliceVar(&f.states, "state", nil, "only transitions into these `STATES` (e.g. --state CLOSE,CLOSE_WAIT)")
}

// selection is what filterFlags resolve to.
type selection struct {
	kernel    probe.Filter
	netnsPath string   // --netns as a file, so sock_diag can enter it
	comm      string   // owner comm, exact, as the kernel truncates it
	states    [16]bool // wanted new states, when any is set
	any       bool     // states has an entry
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

func (f *filterFlags) resolve() (selection, error) {
	var s selection
	if f.pid < 0 || f.pid > math.MaxUint32 || (f.pid == 0 && f.fs.Changed("pid")) {
		return s, usagef("invalid --pid %d: want a process id above 0", f.pid)
	}
	s.kernel.PID = uint32(f.pid)
	if f.comm != "" {
		// The kernel keeps 15 bytes of a command name.
		s.comm = f.comm
		if len(s.comm) > 15 {
			s.comm = s.comm[:15]
		}
	}
	var err error
	if s.kernel.LocalPorts, err = parsePorts("--lport", f.lports); err != nil {
		return s, err
	}
	if s.kernel.RemotePorts, err = parsePorts("--rport", f.rports); err != nil {
		return s, err
	}
	switch {
	case f.ipv4 && f.ipv6:
		return s, usagef("-4 and -6 exclude each other")
	case f.ipv4:
		s.kernel.Family = probe.AFInet
	case f.ipv6:
		s.kernel.Family = probe.AFInet6
	}
	if f.netns != "" {
		ino, err := probe.NetNSInode(f.netns)
		if err != nil {
			return s, usagef("invalid --netns: %v", err)
		}
		s.kernel.NetNS = ino
		if path, err := probe.NetNSPath(f.netns); err == nil {
			s.netnsPath = path
		}
	}
	if f.cgroup != "" {
		id, level, err := probe.CgroupFilter(f.cgroup)
		if err != nil {
			return s, usagef("invalid --cgroup: %v", err)
		}
		s.kernel.CgroupID, s.kernel.CgroupLevel = id, level
	}
	for _, name := range f.states {
		st, err := probe.ParseState(strings.TrimSpace(name))
		if err != nil {
			return s, usagef("invalid --state: %v (want e.g. ESTABLISHED, CLOSE_WAIT, CLOSE)", err)
		}
		switch st {
		case probe.StateTimeWait, probe.StateNewSynRecv:
			return s, usagef("invalid --state %s: the kernel never reports a transition into it", st)
		}
		s.states[st] = true
		s.any = true
	}
	return s, nil
}

func parsePorts(flag string, values []string) ([]uint16, error) {
	var ports []uint16
	for _, v := range values {
		v = strings.TrimSpace(v)
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			return nil, usagef("invalid %s %q: want a port from 1 to 65535", flag, v)
		}
		ports = append(ports, uint16(n))
	}
	return ports, nil
}

// outputFormat is -o.
type outputFormat string

const (
	outputTable outputFormat = "table"
	outputJSON  outputFormat = "json"
)

func parseOutput(s string) (outputFormat, error) {
	switch o := outputFormat(s); o {
	case outputTable, outputJSON:
		return o, nil
	}
	return "", usagef("invalid --output %q: want table or json", s)
}

// netnsPaths is the namespace --netns named, for the session's sock_diag.
func (s *selection) netnsPaths() map[uint32]string {
	if s.netnsPath == "" {
		return nil
	}
	return map[uint32]string{s.kernel.NetNS: s.netnsPath}
}
