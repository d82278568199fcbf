package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
)

// tracer is a process under test: tcpfsm agent, bpftrace, or nothing.
type tracer struct {
	name string
	cmd  *exec.Cmd
}

func (t *tracer) pid() int {
	if t == nil || t.cmd == nil {
		return 0
	}
	return t.cmd.Process.Pid
}

// startAgent runs `tcpfsm agent` with records logged to /dev/null (they are
// still rendered) and waits until /readyz answers.
func startAgent(cfg *config, extra ...string) (*tracer, error) {
	base := []string{"agent", "--web.listen-address", cfg.agentAddr, "--log.file", "/dev/null"}
	cmd := exec.Command(cfg.agent, append(base, extra...)...)
	if cpu, ok := strings.CutPrefix(strings.Join(extra, " "), "cpu="); ok {
		// taskset execs the agent: same pid.
		cmd = exec.Command("taskset", append([]string{"-c", cpu, cfg.agent}, base...)...)
	}
	cmd.Stdout = nil
	errLog, err := os.Create(filepath.Join(cfg.out, "agent.stderr"))
	if err != nil {
		return nil, err
	}
	cmd.Stderr = errLog
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &tracer{name: "agent", cmd: cmd}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + cfg.agentAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return t, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.stop()
	return nil, errors.New("agent not ready after 30s (see agent.stderr)")
}

// startBpftrace runs the tcpstates equivalent with its output to /dev/null
// and waits until its program is attached (a perf event fd exists).
func startBpftrace(cfg *config) (*tracer, error) {
	cmd := exec.Command("bpftrace", "-o", "/dev/null", cfg.script)
	cmd.Stderr = nil
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &tracer{name: "bpftrace", cmd: cmd}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if len(progIDs(t.pid())) > 0 && hasFd(t.pid(), "[perf_event]") {
			time.Sleep(500 * time.Millisecond) // attach and enable follow the fd
			return t, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.stop()
	return nil, errors.New("bpftrace did not attach within 60s")
}

func (t *tracer) stop() {
	if t == nil || t.cmd == nil {
		return
	}
	_ = t.cmd.Process.Signal(syscall.SIGINT) // exited already: done closes
	done := make(chan struct{})
	go func() { _ = t.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = t.cmd.Process.Kill()
		<-done
	}
}

func hasFd(pid int, target string) bool {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if strings.Contains(l, target) {
			return true
		}
	}
	return false
}

// fdinfo returns the key: value pairs of every fd of pid whose fdinfo has key.
func fdinfos(pid int, key string) []map[string]string {
	var out []map[string]string
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		m := map[string]string{"fd": e.Name()}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok {
				if _, dup := m[strings.TrimSpace(k)]; !dup {
					m[strings.TrimSpace(k)] = strings.TrimSpace(v)
				}
			}
		}
		if _, ok := m[key]; ok {
			out = append(out, m)
		}
	}
	return out
}

func progIDs(pid int) []ebpf.ProgramID {
	seen := map[ebpf.ProgramID]bool{}
	var ids []ebpf.ProgramID
	for _, m := range fdinfos(pid, "prog_id") {
		id, _ := strconv.ParseUint(m["prog_id"], 10, 32)
		if !seen[ebpf.ProgramID(id)] {
			seen[ebpf.ProgramID(id)] = true
			ids = append(ids, ebpf.ProgramID(id))
		}
	}
	return ids
}

type progStat struct {
	Name    string
	RunNs   uint64
	RunCnt  uint64
	Misses  uint64
	Program ebpf.ProgramID
}

// progStats reads the kernel's accounting of every program pid holds.
func progStats(pid int) map[ebpf.ProgramID]progStat {
	out := map[ebpf.ProgramID]progStat{}
	for _, id := range progIDs(pid) {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := p.Info()
		if err != nil {
			p.Close()
			continue
		}
		ps, err := p.Stats()
		p.Close()
		if err != nil {
			continue
		}
		out[id] = progStat{Name: info.Name, Program: id, RunCnt: ps.RunCount, RunNs: uint64(ps.Runtime),
			Misses: ps.RecursionMisses}
	}
	return out
}

// cpuSeconds is the user+system time of pid and its threads.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+2:])
	// fields after the comm: state is [0]; utime is field 14 overall -> [11]
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// rssKiB is VmRSS of pid.
func rssKiB(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return 0
}

type churnResult struct {
	Connections uint64  `json:"connections"`
	Seconds     float64 `json:"seconds"`
	PerSecond   float64 `json:"conn_per_s"`
	Errors      uint64  `json:"errors"`
}

// churn runs the load generator: bounded by n and d. FIN churn runs in a
// network namespace of its own, made for this one run: its time-wait
// sockets then start from none every time and never reach the table's
// limit (tcp_max_tw_buckets), past which the kernel stops making them and
// the churn changes regime (about 3x faster), so that every variant of a
// round sees the same build-up.
func churn(cfg *config, n uint64, d time.Duration, rate float64) (churnResult, error) {
	args := []string{"-n", strconv.FormatUint(n, 10), "-d", d.String(),
		"-client-cpu", strconv.Itoa(cfg.clientCPU), "-server-cpu", strconv.Itoa(cfg.serverCPU)}
	if cfg.close != "" {
		args = append(args, "-close", cfg.close)
	}
	if rate > 0 {
		args = append(args, "-rate", strconv.FormatFloat(rate, 'f', -1, 64))
	}
	name, argv := cfg.churn, args
	if cfg.close == "fin" {
		ns, err := newNetns()
		if err != nil {
			return churnResult{}, err
		}
		defer delNetns(ns)
		name, argv = "ip", append([]string{"netns", "exec", ns, cfg.churn}, args...)
	}
	var out, serr bytes.Buffer
	cmd := exec.Command(name, argv...)
	cmd.Stdout, cmd.Stderr = &out, &serr
	if err := cmd.Run(); err != nil {
		return churnResult{}, fmt.Errorf("churn: %w: %s", err, serr.String())
	}
	var r churnResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return r, fmt.Errorf("churn output %q: %w", out.String(), err)
	}
	return r, nil
}

var netnsSeq int

// newNetns makes a network namespace with loopback up, for one churn.
func newNetns() (string, error) {
	netnsSeq++
	ns := fmt.Sprintf("tcpfsm-bench-%d-%d", os.Getpid(), netnsSeq)
	for _, a := range [][]string{{"netns", "add", ns}, {"-n", ns, "link", "set", "lo", "up"}} {
		if b, err := exec.Command("ip", a...).CombinedOutput(); err != nil {
			delNetns(ns)
			return "", fmt.Errorf("ip %s: %w: %s", strings.Join(a, " "), err, b)
		}
	}
	return ns, nil
}

func delNetns(ns string) {
	_ = exec.Command("ip", "netns", "del", ns).Run() // best effort: the name is unique to this run
}

// scrape reads the agent's metrics: name{labels} -> value.
func scrape(cfg *config) (map[string]float64, error) {
	resp, err := http.Get("http://" + cfg.agentAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

func sumPrefix(m map[string]float64, prefix string) float64 {
	var s float64
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			s += v
		}
	}
	return s
}

// cpuTimes is, per CPU, the jiffies busy and in all, from /proc/stat.
func cpuTimes() (busy, total []float64) {
	b, _ := os.ReadFile("/proc/stat")
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		var t, idle float64
		for i, v := range f[1:] {
			x, _ := strconv.ParseFloat(v, 64)
			if i >= 8 { // guest time is counted in user already
				break
			}
			t += x
			if i == 3 || i == 4 { // idle, iowait
				idle += x
			}
		}
		busy = append(busy, t-idle)
		total = append(total, t)
	}
	return busy, total
}

// busyString says how busy each CPU was between two cpuTimes.
func busyString(b0, t0, b1, t1 []float64) string {
	var parts []string
	for i := range b1 {
		if i < len(b0) && t1[i] > t0[i] {
			parts = append(parts, fmt.Sprintf("cpu%d %.0f%%", i, 100*(b1[i]-b0[i])/(t1[i]-t0[i])))
		}
	}
	return strings.Join(parts, " ")
}
