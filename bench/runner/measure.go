package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// What the phases measure an agent with: its ring buffer reader's
// wakeups (from its epoll fd) and its resident memory over time.

// readerEpoll finds the epoll fd of pid's ring buffer reader: the one
// watching a BPF map.
func readerEpoll(pid int) (int, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	tfd := regexp.MustCompile(`(?m)^tfd:\s+(\d+)`)
	for _, e := range ents {
		l, _ := os.Readlink(filepath.Join(dir, e.Name()))
		if l != "anon_inode:[eventpoll]" {
			continue
		}
		info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		for _, m := range tfd.FindAllStringSubmatch(string(info), -1) {
			if t, _ := os.Readlink(filepath.Join(dir, m[1])); t == "anon_inode:bpf-map" {
				return strconv.Atoi(e.Name())
			}
		}
	}
	return 0, errors.New("no epoll fd watching a BPF map")
}

// wakeCounter counts how the reader's epoll waits end: woken by the
// kernel (ret > 0) or at the poll deadline (ret 0). It is a bpftrace
// script on the epoll syscalls of that fd only.
type wakeCounter struct {
	cmd  *exec.Cmd
	file string
}

func startWakeCounter(cfg *config, pid int, tag string) (*wakeCounter, error) {
	epfd, err := readerEpoll(pid)
	if err != nil {
		return nil, err
	}
	prog := fmt.Sprintf(`
tracepoint:syscalls:sys_enter_epoll_pwait, tracepoint:syscalls:sys_enter_epoll_wait /pid == %d && args->epfd == %d/ { @in[tid] = 1; }
tracepoint:syscalls:sys_exit_epoll_pwait, tracepoint:syscalls:sys_exit_epoll_wait /@in[tid]/ {
	if (args->ret > 0) { @woken = count(); } else { @deadline = count(); }
	delete(@in[tid]);
}
END { clear(@in); }`, pid, epfd)
	w := &wakeCounter{file: filepath.Join(cfg.out, "wakeups-"+tag+".txt")}
	w.cmd = exec.Command("bpftrace", "-o", w.file, "-e", prog)
	if err := w.cmd.Start(); err != nil {
		return nil, err
	}
	for i := 0; i < 600; i++ {
		if hasFd(w.cmd.Process.Pid, "[perf_event]") {
			time.Sleep(500 * time.Millisecond)
			return w, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = w.cmd.Process.Kill()
	_ = w.cmd.Wait() // killed: its status says nothing
	return nil, errors.New("wakeup counter did not attach")
}

func (w *wakeCounter) stop() (woken, deadline uint64, err error) {
	_ = w.cmd.Process.Signal(unix.SIGINT)
	_ = w.cmd.Wait() // interrupted: its status says nothing; its file does
	b, err := os.ReadFile(w.file)
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "@woken: "); ok {
			woken, _ = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
		if v, ok := strings.CutPrefix(l, "@deadline: "); ok {
			deadline, _ = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return woken, deadline, nil
}

// rssSampler samples VmRSS of pid every interval until stopped.
type rssSampler struct {
	mu      sync.Mutex
	samples []int
	quit    chan struct{}
	done    chan struct{}
}

func sampleRSS(pid int, every time.Duration) *rssSampler {
	s := &rssSampler{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.quit:
				return
			case <-t.C:
				s.mu.Lock()
				s.samples = append(s.samples, rssKiB(pid))
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *rssSampler) stop() []int {
	close(s.quit)
	<-s.done
	return s.samples
}

func describeRSS(samples []int, every time.Duration) map[string]any {
	if len(samples) == 0 {
		return nil
	}
	mx := slices.Max(samples)
	// Flat: the second half's peak against the first half's.
	h := len(samples) / 2
	firstPeak, secondPeak := slices.Max(samples[:max(h, 1)]), slices.Max(samples[h:])
	fmt.Printf("RSS every %s (KiB): %v\n", every, samples)
	fmt.Printf("RSS first %d KiB, last %d KiB, max %d KiB; peak of 1st half %d KiB, of 2nd half %d KiB (%+.1f%%)\n",
		samples[0], samples[len(samples)-1], mx, firstPeak, secondPeak, 100*float64(secondPeak-firstPeak)/float64(firstPeak))
	return map[string]any{"every_s": every.Seconds(), "kib": samples, "max_kib": mx,
		"first_half_peak_kib": firstPeak, "second_half_peak_kib": secondPeak}
}
