package main

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/charmbracelet/x/term"

	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/settings"
	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/top"
	"github.com/tcpfsm/tcpfsm/exporter/api"
	"github.com/tcpfsm/tcpfsm/exporter/connview"
	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

const topSynopsis = `Usage: tcpfsm top [FLAGS]

Show the open TCP connections, live, full screen: counts per state and
their change, opens, closes, resets and failed connects per second, and
every open connection with its owner, endpoints, state, time in that
state, lifetime and bytes, longest in its state first. A connection past
its state's stuck threshold is marked ! and highlighted; a time tcpfsm
cannot know (the connection is older than the tracer) shows as ≥ the time
since it was first seen. Keys: s states, o sort, / search, p pause, enter
opens one connection (its states with their dwell times, the ladder when
both ends are on this host), ? all of them, q quits.

It runs its own probe (as root, or with the capabilities of trace), or
reads a running agent with --agent URL and needs no privileges then.
--once, or a standard output that is no terminal, prints one snapshot
(with -o json, the JSON of the agent's /api/v1/connections) and exits.
`

const topExamples = `  tcpfsm top
  tcpfsm top --state CLOSE_WAIT --min-age 1m        connections stuck closing, longest first
  tcpfsm top --agent http://127.0.0.1:9465 -L 443   read a running agent
  tcpfsm top --agent https://host:9465 --agent.user me --agent.password-file pw --agent.ca-file ca.pem
  tcpfsm top --once -o json --state close_wait      one snapshot as JSON
`

// topConfig is what top runs with.
type topConfig struct {
	sel       selection
	output    outputFormat
	once      bool
	sort      connview.Sort
	minAge    time.Duration
	stuckOnly bool
	limit     int
	interval  time.Duration
	noHeader  bool
	attach    probe.Attach
	lifecycle lifecycle.Config
	stuck     connview.Thresholds
	agent     agentClient
}

// agentClient is how top reaches an agent.
type agentClient struct {
	url                       string
	user, passwordFile        string
	caFile, certFile, keyFile string
	insecure                  bool
}

func topCommand(c *topConfig) settings.Command {
	return settings.Command{Name: "top", Settings: sliceOf(kernelFilters(&c.sel),
		[]settings.Setting{commFilter(&c.sel), stateFilter(&c.sel, true),
			&settings.Duration{Spec: settings.Spec{Flag: "min-age",
				Help: "only connections in their state for at least this `DURATION` (e.g. --min-age 1m)"},
				Min: 1, Unset: "any age",
				To: func(v time.Duration) error { c.minAge = v; return nil }},
			&settings.Bool{Spec: settings.Spec{Flag: "stuck",
				Help: "only connections past their state's stuck threshold"},
				To: func(v bool) error { c.stuckOnly = v; return nil }},
			&settings.String{Spec: settings.Spec{Flag: "sort",
				Help: "order by `KEY`: age (time in state), lifetime or bytes, largest first"},
				Default: "age",
				Check: func(v string) error {
					_, err := connview.ParseSort(v)
					return err
				},
				To: func(v string) error {
					var err error
					c.sort, err = connview.ParseSort(v)
					return err
				}},
			&settings.Int{Spec: settings.Spec{Flag: "limit",
				Help: "read at most `N` connections each time, the first in the order"},
				Default: connview.DefaultLimit, Min: 1, Max: connview.MaxLimit,
				To: func(v int64) error { c.limit = int(v); return nil }},
			&settings.Duration{Spec: settings.Spec{Flag: "interval",
				Help: "refresh every `DURATION`"},
				Default: time.Second, Min: 100 * time.Millisecond, Max: time.Minute,
				To: func(v time.Duration) error { c.interval = v; return nil }},
			&settings.Bool{Spec: settings.Spec{Flag: "once",
				Help: "print one snapshot and exit (also when standard output is no terminal)"},
				To: func(v bool) error { c.once = v; return nil }},
			outputSetting(&c.output, "snapshot `FORMAT`: table, or json for the agent API's JSON (e.g. -o json)"),
			noHeaderSetting(&c.noHeader),

			&settings.String{Spec: settings.Spec{Flag: "agent",
				Help: "read the agent serving at `URL` instead of running a probe (e.g. --agent http://127.0.0.1:9465)"},
				Check: func(v string) error {
					if v == "" {
						return nil
					}
					u, err := url.Parse(v)
					if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
						return fmt.Errorf("want http://HOST:PORT or https://HOST:PORT")
					}
					return nil
				},
				To: func(v string) error { c.agent.url = v; return nil }},
			&settings.String{Spec: settings.Spec{Flag: "agent.user",
				Help: "basic auth `USER` for the agent (its web.config_file's basic_auth_users)"},
				To: func(v string) error { c.agent.user = v; return nil }},
			&settings.String{Spec: settings.Spec{Flag: "agent.password-file",
				Help: "read the basic auth password from `FILE` (its first line)"},
				To: func(v string) error { c.agent.passwordFile = v; return nil }},
			&settings.String{Spec: settings.Spec{Flag: "agent.ca-file",
				Help: "trust the agent's TLS certificate if this CA (PEM `FILE`) signed it"},
				To: func(v string) error { c.agent.caFile = v; return nil }},
			&settings.String{Spec: settings.Spec{Flag: "agent.cert-file",
				Help: "client certificate (PEM `FILE`) for an agent that asks for one"},
				To: func(v string) error { c.agent.certFile = v; return nil }},
			&settings.String{Spec: settings.Spec{Flag: "agent.key-file",
				Help: "the client certificate's key (PEM `FILE`)"},
				To: func(v string) error { c.agent.keyFile = v; return nil }},
			&settings.Bool{Spec: settings.Spec{Flag: "agent.insecure-skip-verify",
				Help: "do not check the agent's TLS certificate"},
				To: func(v bool) error { c.agent.insecure = v; return nil }},

			attachSetting(&c.attach),
			maxTrackedSetting(&c.lifecycle),
		}, stuckSettings(&c.stuck))}
}

func parseTop(args []string, usage io.Writer) (c topConfig, help bool, err error) {
	fs, help, err := parseCommand(topCommand(&c), args, usage, topSynopsis, topExamples)
	if err != nil || help {
		return c, help, err
	}
	if err := noArguments(fs); err != nil {
		return c, false, err
	}
	a := &c.agent
	if a.url == "" {
		for flag, v := range map[string]string{"--agent.user": a.user, "--agent.password-file": a.passwordFile,
			"--agent.ca-file": a.caFile, "--agent.cert-file": a.certFile, "--agent.key-file": a.keyFile} {
			if v != "" {
				return c, false, usagef("%s needs --agent", flag)
			}
		}
		if a.insecure {
			return c, false, usagef("--agent.insecure-skip-verify needs --agent")
		}
	}
	if (a.certFile == "") != (a.keyFile == "") {
		return c, false, usagef("--agent.cert-file and --agent.key-file go together")
	}
	if a.passwordFile != "" && a.user == "" {
		return c, false, usagef("--agent.password-file needs --agent.user")
	}
	return c, false, nil
}

// query is the selection the filters ask for. The kernel's filters are
// part of it too: the agent applies them to what it traces, and a probe's
// snapshot of older connections is filtered by socket fields only.
func (c *topConfig) query(agent bool) connview.Query {
	s := &c.sel
	q := connview.Query{Pid: s.kernel.PID, LocalPorts: s.kernel.LocalPorts, RemotePorts: s.kernel.RemotePorts,
		Family: s.kernel.Family, NetNS: s.kernel.NetNS, Comm: s.comm, MinAge: c.minAge, Stuck: c.stuckOnly,
		Sort: c.sort, Limit: c.limit}
	for st, on := range s.states {
		if on {
			q.States = append(q.States, probe.State(st))
		}
	}
	if agent && s.cgroup != "" {
		// The agent names cgroups as /proc/PID/cgroup does: relative to
		// the cgroup2 mount.
		q.Cgroup = s.cgroup
		if root, err := cgroups.Mount(); err == nil && filepath.IsAbs(s.cgroup) {
			if rel, ok := strings.CutPrefix(filepath.Clean(s.cgroup), root); ok {
				q.Cgroup = "/" + strings.TrimPrefix(rel, "/")
			}
		}
	}
	return q
}

func runTop(args []string, stdout, stderr io.Writer) error {
	c, help, err := parseTop(args, stdout)
	if err != nil || help {
		return err
	}
	if c.sel.meta.pod != "" {
		// --pod is found on this host and becomes the probe's cgroup filter.
		if c.agent.url != "" {
			return usagef("--pod is resolved on this host, for top's own probe: with --agent give the pod's cgroup (--cgroup)")
		}
		names, err := (&metaConfig{entries: defaultMetaEntries, ttl: defaultMetaTTL}).open(cliLogger(stderr))
		if err != nil {
			return err
		}
		err = resolvePod(&c.sel, names)
		if names != nil {
			names.Close()
		}
		if err != nil {
			return err
		}
	}
	var src top.Source
	var stop func() error
	if c.agent.url != "" {
		as, err := newAgentSource(&c.agent)
		if err != nil {
			return err
		}
		src, stop = as, func() error { return nil }
	} else {
		ls, err := openLocalSource(&c, stderr)
		if err != nil {
			return err
		}
		src, stop = ls, ls.stop
	}
	q := c.query(c.agent.url != "")
	interactive := !c.once && isTerminal(stdout)
	if !interactive {
		err := printSnapshot(src, &q, c.output, c.noHeader, stdout)
		if serr := stop(); err == nil {
			err = serr
		}
		return err
	}
	// A first reading before the screen is taken: a source that cannot
	// be read (no credentials, nothing listening) is said plainly.
	first, err := src.Snapshot(&q)
	if err != nil {
		_ = stop() // the read error is the one to say
		return readErr(src, err)
	}
	var in io.Reader
	if isTerminal(os.Stdin) {
		in = os.Stdin
	}
	err = top.Run(src, top.Options{Query: q, Interval: c.interval}, &first, in, stdout)
	if serr := stop(); err == nil {
		err = serr
	}
	return err
}

// printSnapshot is --once: the connections as a table or as the API's JSON.
func printSnapshot(src top.Source, q *connview.Query, output outputFormat, noHeader bool, w io.Writer) error {
	if as, ok := src.(*agentSource); ok && output == outputJSON {
		// The agent's answer, byte for byte.
		raw, _, _, err := as.client.Connections(q)
		if err != nil {
			return readErr(src, err)
		}
		_, err = w.Write(raw)
		return err
	}
	s, err := src.Snapshot(q)
	if err != nil {
		return readErr(src, err)
	}
	if output == outputJSON {
		b, err := api.Marshal(s.Conns)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	if noHeader {
		var b strings.Builder
		if err := top.WriteTable(&b, s.Conns); err != nil {
			return err
		}
		_, rest, _ := strings.Cut(b.String(), "\n")
		_, err := io.WriteString(w, rest)
		return err
	}
	return top.WriteTable(w, s.Conns)
}

func readErr(src top.Source, err error) error {
	return fmt.Errorf("%s: %w", src.Name(), err)
}

// isTerminal reports whether f is a terminal.
func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	return ok && term.IsTerminal(file.Fd())
}
