package main

// tcpfsm agent with least privilege: CAP_BPF and CAP_PERFMON only, as
// nobody, and what each further capability adds; a missing one is named.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"golang.org/x/sys/unix"
)

// ---- capabilities ----

const capsBPFPerfmon = uint64(1)<<unix.CAP_BPF | uint64(1)<<unix.CAP_PERFMON

// asNobody runs a process as uid/gid 65534 whose only capabilities are
// the ambient ones given: after exec they are its permitted and effective
// sets, as systemd's AmbientCapabilities= does for a service user.
func asNobody(caps ...uintptr) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}},
		AmbientCaps: caps,
	}
}

// publicDir is a directory uid 65534 may enter, holding a copy of the
// binary and a log file owned by uid (65534 or 0: an agent without
// CAP_DAC_OVERRIDE opens only its own files).
func publicDir(t testing.TB, bin string, uid int) (dir, binCopy, logFile string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "tcpfsm-agent-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	binCopy = filepath.Join(dir, "tcpfsm")
	if err := os.WriteFile(binCopy, data, 0o755); err != nil {
		t.Fatal(err)
	}
	logFile = filepath.Join(dir, "connections.jsonl")
	if err := os.WriteFile(logFile, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(logFile, uid, uid); err != nil {
		t.Fatal(err)
	}
	return dir, binCopy, logFile
}

// procCaps reads a process's capability sets from /proc/PID/status.
func procCaps(t testing.TB, pid int) map[string]uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	caps := map[string]uint64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.HasPrefix(k, "Cap") {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			caps[k] = n
		}
	}
	return caps
}

// capshKeeping runs a command as uid 0 whose bounding set holds only the
// given capabilities (and no inheritable ones): after exec, root's
// permitted and effective sets are the bounding set.
func capshKeeping(t testing.TB, keep ...int) []string {
	t.Helper()
	capsh := needTool(t, "capsh", "libcap2-bin")
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		t.Fatal(err)
	}
	last, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	var drop []string
	for c := 0; c <= last; c++ {
		if !slices.Contains(keep, c) {
			drop = append(drop, strconv.Itoa(c))
		}
	}
	return []string{capsh, "--inh=", "--drop=" + strings.Join(drop, ","), "--", "-c", `exec "$0" "$@"`}
}

// Least privilege: with CAP_BPF and CAP_PERFMON only, as an unprivileged
// user (systemd's DynamicUser= and AmbientCapabilities=) and as uid 0 with
// every other capability out of the bounding set (Kubernetes' drop ALL, add
// BPF and PERFMON), the agent traces, counts and logs.
func TestAgentLeastPrivilege(t *testing.T) {
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	for _, tc := range []struct {
		name   string
		nobody bool
	}{{"uid 65534, ambient CAP_BPF CAP_PERFMON", true}, {"uid 0, bounding set CAP_BPF CAP_PERFMON", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ns := nettest.NewNS(t)
			uid := 0
			if tc.nobody {
				uid = 65534
			}
			_, binCopy, logFile := publicDir(t, bin, uid)
			o := agentOptions{args: append([]string{"--netns", strconv.FormatUint(uint64(ns.Inode), 10), "--log.file", logFile}, small...)}
			if tc.nobody {
				o.sys = asNobody(unix.CAP_BPF, unix.CAP_PERFMON)
			} else {
				o.prefix = capshKeeping(t, unix.CAP_BPF, unix.CAP_PERFMON)
			}
			a := startAgent(t, binCopy, o)
			caps := procCaps(t, a.cmd.Process.Pid)
			if caps["CapEff"] != capsBPFPerfmon || caps["CapPrm"] != capsBPFPerfmon {
				t.Fatalf("agent's capabilities: CapEff %#x CapPrm %#x, want %#x (CAP_BPF, CAP_PERFMON)",
					caps["CapEff"], caps["CapPrm"], capsBPFPerfmon)
			}
			st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
			wantUID := "0"
			if tc.nobody {
				wantUID = "65534"
			}
			if !regexp.MustCompile(`(?m)^Uid:\s+` + wantUID + `\s`).Match(st) {
				t.Errorf("agent's uid is not %s:\n%s", wantUID, st)
			}
			t.Logf("CapEff %#x CapPrm %#x CapBnd %#x CapAmb %#x", caps["CapEff"], caps["CapPrm"], caps["CapBnd"], caps["CapAmb"])

			before, _ := a.scrape(t)
			ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
			done := nettest.Serve(t, ln, 500)
			var ports []int
			for i := 0; i < 5; i++ {
				ports = append(ports, ns.Graceful(t, ln.Addr().String(), 100))
				<-done
			}
			ns.Refused(t)
			srvPort := ln.Addr().(*net.TCPAddr).Port
			a.waitMetric(t, "10 closes and a refusal", func(m map[string]*dto.MetricFamily) bool {
				return metricSum(m, "tcpfsm_connections_closed_total")-metricSum(before, "tcpfsm_connections_closed_total") >= 11 &&
					metricSum(m, "tcpfsm_connect_failures_total", "reason", "refused") >= 1
			})
			if code := a.stop(t); code != 0 {
				t.Fatalf("exit %d\n%s", code, a.stderr)
			}
			if strings.Contains(a.stderr.String(), `"level":"ERROR"`) {
				t.Errorf("errors logged:\n%s", a.stderr)
			}
			recs := readRecords(t, logFile)
			have := map[[2]int]logRecord{}
			for _, r := range recs {
				have[[2]int{r.Lport, r.Rport}] = r
			}
			for _, p := range ports {
				c, cok := have[[2]int{p, srvPort}]
				s, sok := have[[2]int{srvPort, p}]
				if !cok || !sok || c.Role != "active" || s.Role != "passive" || c.Close != "graceful" || s.Close != "graceful" {
					t.Errorf("port %d: client record %+v (%v), server record %+v (%v)", p, c, cok, s, sok)
				}
				if c.Netns != ns.Inode {
					t.Errorf("record in netns %d, want %d", c.Netns, ns.Inode)
				}
			}
		})
	}
}

// Without CAP_BPF (or CAP_PERFMON) the agent exits 1 at once and says
// which capability it lacks.
func TestAgentMissingCapability(t *testing.T) {
	nettest.RequireBPF(t)
	bin := buildBinary(t)
	_, binCopy, logFile := publicDir(t, bin, 65534)
	for _, tc := range []struct {
		has     uintptr
		missing string
	}{{unix.CAP_PERFMON, "CAP_BPF"}, {unix.CAP_BPF, "CAP_PERFMON"}} {
		a := startAgent(t, binCopy, agentOptions{args: append([]string{"--log.file", logFile}, small...), sys: asNobody(tc.has), fails: true})
		code := a.wait(t)
		msg := a.stderr.String()
		if code != exitError || !strings.Contains(msg, tc.missing) || strings.Count(msg, "\n") != 1 {
			t.Errorf("without %s: exit %d, stderr %q; want exit 1 and one line naming %s", tc.missing, code, msg, tc.missing)
		}
	}
}

// bindNetNS makes the namespace reachable by path for any user: a bind
// mount of it on a file in dir (as ip netns add does under /run/netns).
func bindNetNS(t testing.TB, ns *nettest.NS, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "netns")
	if err := os.WriteFile(p, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(ns.Path(), p, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount the namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", p, err)
		}
	})
	return p
}

// What each capability beyond CAP_BPF and CAP_PERFMON adds, as
// deploy/README.md says, for an agent running as an unprivileged user.
func TestAgentCapabilityClaims(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)

	// BPF run-time statistics (BPF_ENABLE_STATS) need CAP_SYS_ADMIN.
	t.Run("bpf stats need CAP_SYS_ADMIN", func(t *testing.T) {
		for _, tc := range []struct {
			caps  []uintptr
			stats bool
		}{{[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON}, false}, {[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_ADMIN}, true}} {
			ns := nettest.NewNS(t)
			_, binCopy, logFile := publicDir(t, bin, 65534)
			a := startAgent(t, binCopy, agentOptions{args: []string{"--netns", fmt.Sprint(ns.Inode), "--log.file", logFile,
				"--metrics.bpf-stats"}, sys: asNobody(tc.caps...)})
			ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
			done := nettest.Serve(t, ln, 0)
			ns.Graceful(t, ln.Addr().String(), 10)
			<-done
			mfs := a.waitMetric(t, "a close", func(m map[string]*dto.MetricFamily) bool {
				return metricSum(m, "tcpfsm_connections_closed_total") >= 2
			})
			warned := strings.Contains(a.stderr.String(), "BPF run-time statistics unavailable (needs CAP_SYS_ADMIN)")
			if warned == tc.stats {
				t.Errorf("caps %v: warning logged %v, want %v\n%s", tc.caps, warned, !tc.stats, a.stderr)
			}
			// Other processes may turn statistics on for everyone; only
			// the agent's own can be relied on.
			if secs := metricSum(mfs, "tcpfsm_bpf_program_run_seconds_total"); tc.stats && secs <= 0 {
				t.Errorf("with CAP_SYS_ADMIN: tcpfsm_bpf_program_run_seconds_total %v, want > 0", secs)
			}
			a.stop(t)
		}
	})

	// sock_diag in a network namespace goes through setns(), which needs
	// CAP_SYS_ADMIN: without it, a connection older than the agent is not
	// in the start snapshot. Naming its owner reads /proc/PID/fd of a more
	// privileged process of another user: CAP_SYS_PTRACE and
	// CAP_DAC_READ_SEARCH.
	t.Run("snapshot needs CAP_SYS_ADMIN, owners CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH", func(t *testing.T) {
		for _, tc := range []struct {
			caps          []uintptr
			seeded, owner bool
		}{
			{[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON}, false, false},
			{[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_ADMIN}, true, false},
			{[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_ADMIN, unix.CAP_SYS_PTRACE}, true, false},
			{[]uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_ADMIN, unix.CAP_SYS_PTRACE, unix.CAP_DAC_READ_SEARCH}, true, true},
		} {
			ns := nettest.NewNS(t)
			dir, binCopy, logFile := publicDir(t, bin, 65534)
			nsFile := bindNetNS(t, ns, dir)
			// A connection older than the agent; this process (root, every
			// capability) holds both ends.
			ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
			cli, err := ns.Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			srv, err := ln.AcceptTCP()
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			a := startAgent(t, binCopy, agentOptions{args: []string{"--netns", nsFile, "--log.file", logFile}, sys: asNobody(tc.caps...)})
			// The client aborts: the server's end goes to CLOSE on the RST,
			// in softirq, with no system call of its owner to name it.
			if err := cli.SetLinger(0); err != nil {
				t.Fatal(err)
			}
			cli.Close()
			a.waitMetric(t, "the reset", func(m map[string]*dto.MetricFamily) bool {
				return metricSum(m, "tcpfsm_connections_closed_total") >= 1
			})
			if code := a.stop(t); code != 0 {
				t.Fatalf("exit %d\n%s", code, a.stderr)
			}
			srvPort, cliPort := ln.Addr().(*net.TCPAddr).Port, cli.LocalAddr().(*net.TCPAddr).Port
			var rec *logRecord
			recs := readRecords(t, logFile)
			for i := range recs {
				if recs[i].Lport == srvPort && recs[i].Rport == cliPort {
					rec = &recs[i]
				}
			}
			if rec == nil {
				t.Fatalf("caps %v: no record of the server's end; log: %+v", tc.caps, recs)
			}
			// The agent warns about each missing capability.
			for c, name := range map[uintptr]string{unix.CAP_SYS_ADMIN: "CAP_SYS_ADMIN", unix.CAP_SYS_PTRACE: "CAP_SYS_PTRACE"} {
				warned := strings.Contains(a.stderr.String(), `"level":"WARN","msg":"without `+name)
				if warned == slices.Contains(tc.caps, c) {
					t.Errorf("caps %v: warning about %s %v, want %v\n%s", tc.caps, name, warned, !warned, a.stderr)
				}
			}
			owner := rec.Owner != nil && rec.Owner.Pid == os.Getpid()
			if rec.Seeded != tc.seeded || owner != tc.owner {
				t.Errorf("caps %v: seeded %v owner %+v; want seeded %v, owner known %v", tc.caps, rec.Seeded, rec.Owner, tc.seeded, tc.owner)
			}
		}
	})

	// The classic tracepoint needs tracefs; mounting it needs
	// CAP_SYS_ADMIN. In a mount namespace of its own without tracefs, as
	// uid 0 with a bounding set of CAP_BPF CAP_PERFMON (+ CAP_SYS_ADMIN).
	t.Run("mounting tracefs needs CAP_SYS_ADMIN", func(t *testing.T) {
		unshare := needTool(t, "unshare", "util-linux")
		for _, tc := range []struct {
			keep   []int
			attach bool
		}{{[]int{unix.CAP_BPF, unix.CAP_PERFMON}, false}, {[]int{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_ADMIN}, true}} {
			ns := nettest.NewNS(t)
			prefix := append([]string{unshare, "--mount", "--propagation", "private", "sh", "-c",
				`umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug/tracing 2>/dev/null; ` +
					`if [ -e /sys/kernel/tracing/events ]; then echo tracefs still mounted >&2; exit 9; fi; exec "$@"`, "sh"},
				capshKeeping(t, tc.keep...)...)
			a := startAgent(t, bin, agentOptions{prefix: prefix, fails: !tc.attach,
				args: []string{"--attach", "tracepoint", "--netns", fmt.Sprint(ns.Inode), "--log.file", filepath.Join(t.TempDir(), "log")}})
			if tc.attach {
				if !strings.Contains(a.stderr.String(), `"hook":"tracepoint"`) {
					t.Errorf("with CAP_SYS_ADMIN: not attached to the tracepoint:\n%s", a.stderr)
				}
				a.stop(t)
				continue
			}
			code := a.wait(t)
			if code != exitError || !strings.Contains(a.stderr.String(), "tracefs") || !strings.Contains(a.stderr.String(), "CAP_SYS_ADMIN") {
				t.Errorf("without CAP_SYS_ADMIN: exit %d, stderr %q; want exit 1 naming tracefs and CAP_SYS_ADMIN", code, a.stderr)
			}
		}
	})
}
