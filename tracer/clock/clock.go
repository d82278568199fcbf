// Package clock converts the kernel's monotonic event timestamps to wall
// clock time.
package clock

import (
	"time"

	"golang.org/x/sys/unix"
)

// Clock maps CLOCK_MONOTONIC nanoseconds, as bpf_ktime_get_ns() reports
// them, to wall clock time. The offset is taken once: a wall clock step
// after that (NTP) does not move events already mapped.
type Clock struct {
	// BootNs is the wall clock time, in Unix nanoseconds, at which the
	// monotonic clock read zero.
	BootNs int64
}

// Now samples both clocks and returns the mapping between them.
func Now() (Clock, error) {
	var mono, real1, real2 unix.Timespec
	// Bracket the monotonic read with two wall clock reads and take their
	// midpoint, so the error is half the time between them.
	if err := unix.ClockGettime(unix.CLOCK_REALTIME, &real1); err != nil {
		return Clock{}, err
	}
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono); err != nil {
		return Clock{}, err
	}
	if err := unix.ClockGettime(unix.CLOCK_REALTIME, &real2); err != nil {
		return Clock{}, err
	}
	mid := (real1.Nano() + real2.Nano()) / 2
	return Clock{BootNs: mid - mono.Nano()}, nil
}

// Wall returns the wall clock time of a monotonic timestamp.
func (c Clock) Wall(monoNs uint64) time.Time {
	return time.Unix(0, c.BootNs+int64(monoNs))
}

// Monotonic returns the current CLOCK_MONOTONIC time in nanoseconds.
func Monotonic() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // cannot fail for this clock
	return uint64(ts.Nano())
}
