// Command kernelcheck reports what the running kernel offers tcpfsm beyond
// what its test suite exercises: the BPF helpers tcpfsm's program calls,
// and whether BPF trampolines (fentry, fexit, tp_btf) and kprobes load,
// attach and fire. It makes a few TCP connections over 127.0.0.1 in the
// current network namespace, where the client closes first, and counts
// the runs of each program with the kernel's BPF run statistics.
//
// The kernel harness (.ci/kernels/run.sh --kernel-checks) runs it inside
// the VM; as root it runs on any machine. It exits 1 when a BPF trampoline
// cannot be attached or does not fire, 0 otherwise.
package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

const conns = 5

func main() {
	var uts unix.Utsname
	unix.Uname(&uts)
	fmt.Printf("kernel %s\n", unix.ByteSliceToString(uts.Release[:]))

	// Not needed from 5.11 on, but it keeps cilium/ebpf from blaming
	// MEMLOCK for a refused load.
	if err := rlimit.RemoveMemlock(); err != nil {
		fmt.Printf("remove memlock limit: %v\n", err)
	}
	helpers()

	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		fmt.Printf("cannot enable BPF run statistics: %v\n", err)
		os.Exit(1)
	}
	defer stats.Close()

	type probe struct {
		name    string
		program *ebpf.ProgramSpec
		attach  func(*ebpf.Program) (link.Link, error)
		atLeast int  // runs expected from the traffic
		needed  bool // a failure fails the check
	}
	ret0 := asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
	tracing := func(at ebpf.AttachType, fn string) *ebpf.ProgramSpec {
		return &ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: at, AttachTo: fn, Instructions: ret0, License: "GPL"}
	}
	attachTracing := func(p *ebpf.Program) (link.Link, error) { return link.AttachTracing(link.TracingOptions{Program: p}) }
	probes := []probe{
		// One run per actively closed connection: the client's socket
		// becomes a TIME_WAIT mini-socket.
		{"fentry/tcp_time_wait", tracing(ebpf.AttachTraceFEntry, "tcp_time_wait"), attachTracing, conns, true},
		{"fexit/inet_csk_accept", tracing(ebpf.AttachTraceFExit, "inet_csk_accept"), attachTracing, conns, true},
		{"fentry/inet_twsk_kill", tracing(ebpf.AttachTraceFEntry, "inet_twsk_kill"), attachTracing, 0, false},
		// About 7 transitions per connection, counting both ends and the listener.
		{"tp_btf/inet_sock_set_state", tracing(ebpf.AttachTraceRawTp, "inet_sock_set_state"), attachTracing, 5 * conns, true},
		{"kprobe/tcp_time_wait", &ebpf.ProgramSpec{Type: ebpf.Kprobe, Instructions: ret0, License: "GPL"},
			func(p *ebpf.Program) (link.Link, error) { return link.Kprobe("tcp_time_wait", p, nil) }, conns, false},
	}

	type loaded struct {
		probe
		prog *ebpf.Program
		err  error
	}
	var all []*loaded
	for _, pr := range probes {
		l := &loaded{probe: pr}
		all = append(all, l)
		l.prog, l.err = ebpf.NewProgram(pr.program)
		if l.err != nil {
			l.err = fmt.Errorf("load: %w", l.err)
			continue
		}
		lk, err := pr.attach(l.prog)
		if err != nil {
			l.err = fmt.Errorf("attach: %w", err)
			continue
		}
		defer lk.Close()
	}

	if err := traffic(); err != nil {
		fmt.Printf("traffic: %v\n", err)
		os.Exit(1)
	}
	// The last TIME_WAIT transitions follow the servers' closes.
	time.Sleep(500 * time.Millisecond)

	failed := false
	for _, l := range all {
		verdict := "ok"
		switch {
		case l.err != nil:
			// cilium/ebpf suggests MEMLOCK on any EPERM with an empty
			// verifier log; the limit was removed above.
			verdict = "UNAVAILABLE: " + strings.ReplaceAll(l.err.Error(), " (MEMLOCK may be too low, consider rlimit.RemoveMemlock)", "")
		default:
			st, err := l.prog.Stats()
			switch {
			case err != nil:
				verdict = "attached, no statistics: " + err.Error()
			case int(st.RunCount) < l.atLeast:
				verdict = fmt.Sprintf("attached, ran %d times, want at least %d", st.RunCount, l.atLeast)
				l.err = errors.New(verdict)
			default:
				verdict = fmt.Sprintf("attached, ran %d times for %d connections", st.RunCount, conns)
			}
		}
		if l.err != nil && l.needed {
			failed = true
		}
		fmt.Printf("%-28s %s\n", l.name, verdict)
	}
	if failed {
		os.Exit(1)
	}
}

// helpers reports the helpers tcpfsm's programs call, for both program
// types it attaches as.
func helpers() {
	fns := []asm.BuiltinFunc{
		asm.FnMapLookupElem, asm.FnMapUpdateElem, asm.FnMapDeleteElem,
		asm.FnKtimeGetNs, asm.FnGetSmpProcessorId, asm.FnGetCurrentPidTgid,
		asm.FnGetCurrentComm, asm.FnGetCurrentCgroupId, asm.FnGetCurrentAncestorCgroupId,
		asm.FnRingbufReserve, asm.FnRingbufSubmit, asm.FnRingbufQuery,
	}
	for _, pt := range []ebpf.ProgramType{ebpf.RawTracepoint, ebpf.TracePoint} {
		var missing []string
		for _, fn := range fns {
			if err := features.HaveProgramHelper(pt, fn); err != nil {
				missing = append(missing, fmt.Sprintf("%s (%v)", fn, err))
			}
		}
		if len(missing) == 0 {
			fmt.Printf("helpers for %s: all %d tcpfsm calls available\n", pt, len(fns))
		} else {
			fmt.Printf("helpers for %s: MISSING %v\n", pt, missing)
		}
	}
	for _, pt := range []ebpf.ProgramType{ebpf.Tracing, ebpf.Kprobe, ebpf.RawTracepoint, ebpf.TracePoint} {
		err := features.HaveProgramType(pt)
		fmt.Printf("program type %-16s %s\n", pt, availability(err))
	}
	fmt.Printf("map type %-20s %s\n", ebpf.RingBuf, availability(features.HaveMapType(ebpf.RingBuf)))
}

func availability(err error) string {
	if err == nil {
		return "available"
	}
	return "unavailable: " + err.Error()
}

// traffic makes conns loopback connections; the client closes first.
func traffic() error {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	served := make(chan error, conns)
	go func() {
		for i := 0; i < conns; i++ {
			c, err := ln.Accept()
			if err != nil {
				served <- err
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				_, err := io.Copy(io.Discard, c)
				served <- err
			}()
		}
	}()
	for i := 0; i < conns; i++ {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 10*time.Second)
		if err != nil {
			return err
		}
		c.Write([]byte("hello"))
		c.Close()
	}
	for i := 0; i < conns; i++ {
		select {
		case err := <-served:
			if err != nil {
				return err
			}
		case <-time.After(10 * time.Second):
			return errors.New("server side did not finish within 10s")
		}
	}
	return nil
}
