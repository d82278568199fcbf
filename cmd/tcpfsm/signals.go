package main

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// stopSignals end trace, life and record cleanly: detach, drain, flush,
// exit 0. SIGHUP is one of them: a closed terminal or a supervisor's
// hangup should not kill them with 129 and lose what they hold.
var stopSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}

// stopOn stops the probe on SIGINT, SIGTERM, SIGHUP or after d (when not zero),
// and calls tick (when not nil) every second meanwhile. The returned
// function ends the watch.
func stopOn(p *probe.Probe, d time.Duration, tick func()) func() {
	done := make(chan struct{})
	// Before the goroutine starts: a signal sent once stopOn has returned
	// is handled, not left to the default action (which kills), however
	// late the goroutine is scheduled.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, stopSignals...)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer signal.Stop(sig)
		var timeout <-chan time.Time
		if d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			timeout = t.C
		}
		ticker := time.NewTicker(time.Second)
		defer ticker.Stop()
		for {
			select {
			case <-sig:
			case <-timeout:
			case <-done:
				return
			case <-ticker.C:
				if tick != nil {
					tick()
				}
				continue
			}
			// The command's Run returns once the links are gone; one
			// that would not detach is freed by the command's Close.
			_ = p.Stop()
			return
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}
