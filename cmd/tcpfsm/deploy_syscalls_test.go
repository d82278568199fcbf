package main

// deploy/systemd/tcpfsm.service's system call filter: the agent runs under
// the unit's SystemCallFilter= (TestSystemdSyscallFilter, privileged) and
// the filter's semantics as the test reads them (TestUnitSyscalls).

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
)

// ---- the systemd unit's system call filter ----

// syscallGroups reads systemd's system call groups.
func syscallGroups(t testing.TB, sa string) map[string][]string {
	t.Helper()
	out, err := exec.Command(sa, "syscall-filter").Output()
	if err != nil {
		t.Fatal(err)
	}
	groups := map[string][]string{}
	cur := ""
	for _, l := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(l, "@"):
			cur = strings.TrimSpace(l)
		case strings.TrimSpace(l) == "" || strings.HasPrefix(strings.TrimSpace(l), "#"):
		case cur != "":
			groups[cur] = append(groups[cur], strings.TrimSpace(l))
		}
	}
	return groups
}

// unitSyscalls applies the unit's SystemCallFilter= lines in order, as
// systemd does when the first is an allow list: later allow lists add,
// ~lists remove.
func unitSyscalls(t testing.TB, groups map[string][]string, lines []string) map[string]bool {
	t.Helper()
	var expand func(string, map[string]bool)
	expand = func(item string, into map[string]bool) {
		if strings.HasPrefix(item, "@") {
			if _, ok := groups[item]; !ok {
				t.Fatalf("unknown system call group %s", item)
			}
			for _, x := range groups[item] {
				expand(x, into)
			}
			return
		}
		into[item] = true
	}
	allowed := map[string]bool{}
	for i, l := range lines {
		deny := strings.HasPrefix(l, "~")
		if i == 0 && deny {
			t.Fatal("the first SystemCallFilter= is a deny list; this test expects an allow list")
		}
		set := map[string]bool{}
		for _, item := range strings.Fields(strings.TrimPrefix(l, "~")) {
			expand(item, set)
		}
		for s := range set {
			if deny {
				delete(allowed, s)
			} else {
				allowed[s] = true
			}
		}
	}
	return allowed
}

// Every system call the agent makes (traced with strace through start,
// traffic, scrapes and SIGTERM, on either hook) is one the unit's
// SystemCallFilter= allows: the filter does not break bpf().
func TestSystemdSyscallFilter(t *testing.T) {
	nettest.RequireBPF(t)
	strace := needTool(t, "strace", "strace")
	sa := needTool(t, "systemd-analyze", "systemd")
	d := unitDirectives(t, readDeploy(t, "systemd/tcpfsm-agent.service"))
	allowed := unitSyscalls(t, syscallGroups(t, sa), d["SystemCallFilter"])
	for _, must := range []string{"bpf", "perf_event_open", "read", "epoll_pwait"} {
		if !allowed[must] {
			t.Fatalf("the unit's filter does not allow %s", must)
		}
	}
	bin := buildBinary(t)
	for _, attach := range []string{"raw_tracepoint", "tracepoint"} {
		t.Run(attach, func(t *testing.T) {
			ns := nettest.NewNS(t)
			dir := t.TempDir()
			trace := filepath.Join(dir, "strace")
			a := startAgent(t, bin, agentOptions{prefix: []string{strace, "-f", "-qq", "-o", trace},
				args: []string{"--attach", attach, "--netns", ns.Path(), "--log.file", filepath.Join(dir, "log")}})
			ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
			done := nettest.Serve(t, ln, 10)
			ns.Graceful(t, ln.Addr().String(), 10)
			<-done
			ns.Reset(t, ln.Addr().String())
			<-done
			a.waitMetric(t, "the closes", func(m map[string]*dto.MetricFamily) bool {
				return metricSum(m, "tcpfsm_connections_closed_total") >= 4
			})
			a.get(t, "/readyz", "", "")
			// strace forwards no signal: SIGTERM goes to the agent, its
			// child; strace exits with the agent's status.
			kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", a.cmd.Process.Pid, a.cmd.Process.Pid))
			if err != nil || len(strings.Fields(string(kids))) != 1 {
				t.Fatalf("the agent under strace: %q %v", kids, err)
			}
			pid, _ := strconv.Atoi(strings.Fields(string(kids))[0])
			if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := a.wait(t); code != 0 {
				t.Fatalf("exit %d\n%s", code, a.stderr)
			}
			out, err := os.ReadFile(trace)
			if err != nil {
				t.Fatal(err)
			}
			used := map[string]int{}
			re := regexp.MustCompile(`^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]`)
			for _, l := range strings.Split(string(out), "\n") {
				if m := re.FindStringSubmatch(l); m != nil {
					used[m[1]]++
				}
			}
			if used["bpf"] == 0 || (attach == "tracepoint" && used["perf_event_open"] == 0) {
				t.Fatalf("strace saw no bpf()/perf_event_open(): %v", used)
			}
			var denied []string
			for s := range used {
				if !allowed[s] {
					denied = append(denied, s)
				}
			}
			slices.Sort(denied)
			if len(denied) > 0 {
				t.Errorf("the unit's SystemCallFilter= would refuse %v", denied)
			}
			t.Logf("%d distinct system calls, all allowed", len(used))
		})
	}
}

// The SystemCallFilter= semantics TestSystemdSyscallFilter relies on: the
// first line is the allow list, later ones add, ~lines remove, groups
// nest.
func TestUnitSyscalls(t *testing.T) {
	groups := map[string][]string{
		"@system-service": {"@default", "read", "setns"},
		"@default":        {"execve", "exit"},
		"@privileged":     {"bpf", "setuid", "@chown"},
		"@chown":          {"chown", "read"},
	}
	got := unitSyscalls(t, groups, []string{"@system-service", "~@privileged", "bpf perf_event_open"})
	want := []string{"bpf", "execve", "exit", "perf_event_open", "setns"}
	if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, want) {
		t.Errorf("allowed %v, want %v", keys, want)
	}
}
