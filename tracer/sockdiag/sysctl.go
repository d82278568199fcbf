package sockdiag

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// FinTimeoutPath is net.ipv4.tcp_fin_timeout: how long an orphaned
// connection waits in FIN_WAIT2 for its peer's FIN. It is per network
// namespace.
const FinTimeoutPath = "/proc/sys/net/ipv4/tcp_fin_timeout"

// Sysctl is one per-namespace sysctl file, opened in its namespace: the
// kernel picks a network sysctl's namespace when the file is opened (from
// the opening thread's), so reading it later, from any thread, reads that
// namespace's value.
type Sysctl struct{ fd int }

// OpenSysctl opens a sysctl file (a /proc/sys path) of the network
// namespace nsPath names; nsPath "" is the caller's. Another namespace
// needs CAP_SYS_ADMIN, as OpenInNetNS does.
func OpenSysctl(nsPath, path string) (*Sysctl, error) {
	if nsPath == "" {
		return openSysctl(path)
	}
	if same, err := sameNetNS(nsPath); err == nil && same {
		return openSysctl(path)
	}
	type result struct {
		s   *Sysctl
		err error
	}
	ch := make(chan result, 1)
	// As OpenInNetNS: a thread that cannot get back is left locked, and
	// the runtime ends it.
	go func() {
		runtime.LockOSThread()
		var r result
		restored := true
		r.err = func() error {
			target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(target)
			orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(orig)
			if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("setns: %w", err)
			}
			s, oerr := openSysctl(path)
			if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
				restored = false
				if s != nil {
					s.Close()
				}
				return fmt.Errorf("return to own network namespace: %w", err)
			}
			r.s = s
			return oerr
		}()
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- r
	}()
	r := <-ch
	if r.err != nil {
		return nil, fmt.Errorf("sockdiag: %s in network namespace %s: %w", path, nsPath, r.err)
	}
	return r.s, nil
}

func openSysctl(path string) (*Sysctl, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &Sysctl{fd: fd}, nil
}

// Int reads the sysctl's value now.
func (s *Sysctl) Int() (int64, error) {
	var buf [32]byte
	n, err := unix.Pread(s.fd, buf[:], 0)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(buf[:n])), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("sysctl value %q: %w", buf[:n], err)
	}
	return v, nil
}

// Seconds reads a sysctl in seconds as a duration.
func (s *Sysctl) Seconds() (time.Duration, error) {
	v, err := s.Int()
	if err != nil {
		return 0, err
	}
	return time.Duration(v) * time.Second, nil
}

// Close closes the file. Closing twice is harmless.
func (s *Sysctl) Close() error {
	if s == nil || s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}
