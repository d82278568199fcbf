package probe

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// batchWaiter lets the reader wait, once it has emptied the ring buffer,
// for the kernel's next wakeup instead of reading again at once.
//
// The ring buffer's reader (cilium/ebpf's) goes on reading after the ring
// was empty and waits in a level-triggered epoll, so under churn it
// follows right behind the programs, a few events at a time: 1,000 to 1,500
// drains a second for the agent under full RST churn on the 2-core test
// VM, each with the session's work between bursts and a flush of the
// output (a write(2)). An edge-triggered epoll on the same map reports
// only the kernel's wakeups, which the programs force when the unread
// data passes wakeup_bytes (emit.bpf.h): the reader then drains the ring
// in large batches (about 80 drains a second in the same churn), and
// still at least once per flush interval, whatever the wakeups.
type batchWaiter struct {
	mu     sync.Mutex // held while waiting: close waits for the waiter to leave
	epfd   int        // -1 once closed
	events [2]unix.EpollEvent
	stopMu sync.Mutex // guards stopFd, which stop writes while a wait holds mu
	stopFd int        // an eventfd: Stop and Close end a wait, and every later one
}

func newBatchWaiter(ringFD int) (_ *batchWaiter, err error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create epoll fd: %w", err)
	}
	w := &batchWaiter{epfd: epfd, stopFd: -1}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	if w.stopFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("create eventfd: %w", err)
	}
	ring := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(ringFD)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, ringFD, &ring); err != nil {
		return nil, fmt.Errorf("add ring buffer to epoll: %w", err)
	}
	stop := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(w.stopFd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, w.stopFd, &stop); err != nil {
		return nil, fmt.Errorf("add eventfd to epoll: %w", err)
	}
	return w, nil
}

// wait returns at the kernel's next wakeup of the ring's reader, at the
// deadline, or once stop was called; at once if a wakeup came since the
// last wait.
func (w *batchWaiter) wait(deadline time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.epfd >= 0 {
		ms := (time.Until(deadline) + time.Millisecond - 1) / time.Millisecond
		if ms <= 0 {
			return nil
		}
		_, err := unix.EpollWait(w.epfd, w.events[:], int(ms))
		if errors.Is(err, unix.EINTR) {
			continue // the runtime's preemption signals
		}
		if err != nil {
			return fmt.Errorf("wait for the ring buffer: %w", err)
		}
		return nil
	}
	return nil
}

// stop makes the current wait and every later one return at once.
func (w *batchWaiter) stop() error {
	w.stopMu.Lock()
	defer w.stopMu.Unlock()
	if w.stopFd < 0 {
		return nil
	}
	one := [8]byte{1}
	if _, err := unix.Write(w.stopFd, one[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("end the reader's wait: %w", err)
	}
	return nil
}

// close ends a wait in progress and frees the descriptors.
func (w *batchWaiter) close() {
	_ = w.stop() // a failed write: the wait ends at its deadline
	w.mu.Lock()
	if w.epfd >= 0 {
		unix.Close(w.epfd)
		w.epfd = -1
	}
	w.mu.Unlock()
	w.stopMu.Lock()
	if w.stopFd >= 0 {
		unix.Close(w.stopFd)
		w.stopFd = -1
	}
	w.stopMu.Unlock()
}
