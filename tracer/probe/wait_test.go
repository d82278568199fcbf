package probe

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A pipe stands in for the ring buffer's map: both wake their pollers
// when data comes.
func newTestWaiter(t *testing.T) (*batchWaiter, int) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	w, err := newBatchWaiter(p[0])
	if err != nil {
		t.Fatal(err)
	}
	return w, p[1]
}

func timedWait(t *testing.T, w *batchWaiter, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := w.wait(start.Add(d)); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// The waiter reports a wakeup once (edge-triggered): data left unread
// does not end the next wait, which lasts to its deadline, as when
// nothing came.
func TestBatchWaiterEdges(t *testing.T) {
	w, wr := newTestWaiter(t)
	defer w.close()
	if took := timedWait(t, w, 30*time.Millisecond); took < 30*time.Millisecond {
		t.Errorf("nothing came, the wait took %v, want its 30ms", took)
	}
	if _, err := unix.Write(wr, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if took := timedWait(t, w, 5*time.Second); took > time.Second {
		t.Errorf("a wakeup came before the wait, it took %v, want at once", took)
	}
	if took := timedWait(t, w, 30*time.Millisecond); took < 30*time.Millisecond {
		t.Errorf("no new wakeup (the data still unread), the wait took %v, want its 30ms", took)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		_, _ = unix.Write(wr, []byte{2})
	}()
	if took := timedWait(t, w, 5*time.Second); took < 20*time.Millisecond || took > time.Second {
		t.Errorf("a wakeup 20ms into the wait, it took %v", took)
	}
	// A deadline passed: no wait at all.
	if took := timedWait(t, w, -time.Second); took > 10*time.Millisecond {
		t.Errorf("a past deadline, the wait took %v", took)
	}
}

// stop ends the wait in progress and every later one; close ends one in
// progress and frees the descriptors, after which waits return at once.
func TestBatchWaiterStopAndClose(t *testing.T) {
	w, _ := newTestWaiter(t)
	go func() {
		time.Sleep(20 * time.Millisecond)
		if err := w.stop(); err != nil {
			t.Error(err)
		}
	}()
	if took := timedWait(t, w, 5*time.Second); took < 20*time.Millisecond || took > time.Second {
		t.Errorf("stopped 20ms into the wait, it took %v", took)
	}
	for i := 0; i < 3; i++ {
		if took := timedWait(t, w, 5*time.Second); took > time.Second {
			t.Errorf("wait %d after stop took %v, want at once", i, took)
		}
	}

	w2, _ := newTestWaiter(t)
	done := make(chan time.Duration, 1)
	go func() { done <- timedWait(t, w2, 5*time.Second) }()
	time.Sleep(20 * time.Millisecond)
	w2.close()
	if took := <-done; took > time.Second {
		t.Errorf("closed 20ms into the wait, it took %v", took)
	}
	if w2.epfd != -1 || w2.stopFd != -1 {
		t.Errorf("descriptors left open: epoll %d, eventfd %d", w2.epfd, w2.stopFd)
	}
	if took := timedWait(t, w2, 5*time.Second); took > 10*time.Millisecond {
		t.Errorf("a wait after close took %v, want at once", took)
	}
	if err := w2.stop(); err != nil {
		t.Errorf("stop after close: %v", err)
	}
	w2.close() // twice: nothing left to free
}
