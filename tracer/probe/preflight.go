package probe

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Errors a user can act on. Open wraps them with details.
var (
	ErrPrivileges = errors.New("missing privileges")
	ErrNoBTF      = errors.New("kernel has no BTF")
	ErrNoRingBuf  = errors.New("kernel has no BPF ring buffer")
	ErrNoHook     = errors.New("tracepoint sock:inet_sock_set_state is not available")
)

// Capabilities the tracer needs. CAP_SYS_ADMIN covers both on kernels
// before 5.8 split them out, and on any kernel.
const (
	capPerfmon  = 38
	capBPF      = 39
	capSysAdmin = 21
)

// Preflight checks, before anything is loaded, that this process may load
// tracing programs and that the kernel has what tcpfsm needs, so the user
// gets one clear reason instead of a verifier log.
func Preflight() error { return systemChecks.run() }

// checks are what Preflight asks the system, replaceable in tests.
type checks struct {
	caps    func() (uint64, error)
	statBTF func() error
	loadBTF func() error
	ringBuf func() error
}

var systemChecks = checks{
	caps:    effectiveCaps,
	statBTF: func() error { _, err := os.Stat("/sys/kernel/btf/vmlinux"); return err },
	loadBTF: func() error { _, err := btf.LoadKernelSpec(); return err },
	ringBuf: func() error { return features.HaveMapType(ebpf.RingBuf) },
}

func (c checks) run() error {
	if err := checkCapabilities(c.caps); err != nil {
		return err
	}
	if err := c.statBTF(); err != nil {
		return fmt.Errorf("%w: /sys/kernel/btf/vmlinux is missing; tcpfsm needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.4 or newer)", ErrNoBTF)
	}
	if err := c.loadBTF(); err != nil {
		return fmt.Errorf("%w: %w", ErrNoBTF, err)
	}
	if err := c.ringBuf(); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			// The capabilities are there (checked above), so something
			// else refuses bpf(): a seccomp filter, as container runtimes'
			// default profiles apply, or lockdown.
			return fmt.Errorf("%w: the bpf() system call was refused (%w) although the process has the capabilities; a seccomp filter (%s) or kernel lockdown blocks it: allow bpf and perf_event_open in the container's seccomp profile (deploy/README.md)",
				ErrPrivileges, err, seccompMode())
		}
		return fmt.Errorf("%w: tcpfsm needs Linux 5.8 or newer (kernel %s): %w", ErrNoRingBuf, kernelRelease(), err)
	}
	return nil
}

// seccompMode says what /proc/self/status tells of this process's seccomp.
func seccompMode() string {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "seccomp mode unknown"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Seccomp:"); ok {
			switch strings.TrimSpace(v) {
			case "0":
				return "this process has none"
			case "2":
				return "this process runs under one"
			}
		}
	}
	return "seccomp mode unknown"
}

// effectiveCaps returns the process's effective capability set.
func effectiveCaps() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, err
	}
	return uint64(data[0].Effective) | uint64(data[1].Effective)<<32, nil
}

func checkCapabilities(get func() (uint64, error)) error {
	caps, err := get()
	if err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	has := func(c uint) bool { return caps&(1<<c) != 0 }
	if has(capSysAdmin) || (has(capBPF) && has(capPerfmon)) {
		return nil
	}
	var missing []string
	if !has(capBPF) {
		missing = append(missing, "CAP_BPF")
	}
	if !has(capPerfmon) {
		missing = append(missing, "CAP_PERFMON")
	}
	return fmt.Errorf("%w: loading tracing programs needs %s (or CAP_SYS_ADMIN); run as root or grant them, e.g. setcap cap_bpf,cap_perfmon+ep",
		ErrPrivileges, strings.Join(missing, " and "))
}

// explainLoadError turns the kernel's refusal into a message naming the cause.
func explainLoadError(err error) error {
	switch {
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
		return fmt.Errorf("%w: the kernel refused to load or attach tcpfsm's programs (%w); it needs CAP_BPF and CAP_PERFMON, and is refused by lockdown or kernel.unprivileged_bpf_disabled settings", ErrPrivileges, err)
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w (needs Linux 4.16 or newer; kernel %s): %w", ErrNoHook, kernelRelease(), err)
	}
	return fmt.Errorf("load tcpfsm programs: %w", err)
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// KernelRelease returns uname -r.
func KernelRelease() string { return kernelRelease() }

// ensureTracefs mounts tracefs when it is not mounted: the classic
// tracepoint is attached by the id the kernel publishes there.
func ensureTracefs() error {
	for _, dir := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		_, err := os.Stat(dir + "/events")
		if err == nil {
			return nil
		}
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("tracefs at %s is mounted but not readable: reading it needs root or CAP_DAC_READ_SEARCH", dir)
		}
	}
	if err := unix.Mount("nodev", "/sys/kernel/tracing", "tracefs", 0, ""); err != nil {
		return fmt.Errorf("tracefs is not mounted and mounting it at /sys/kernel/tracing failed (needs CAP_SYS_ADMIN): %w", err)
	}
	return nil
}
