package session_test

import (
	"fmt"
	"os"
	"os/signal"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

// printer prints each connection's record once it is complete.
type printer struct{}

func (printer) Closed(*lifecycle.Record) {}
func (printer) Finished(r *lifecycle.Record) {
	fmt.Printf("%s %s:%d -> %s:%d closed by %s: %s, %d bytes sent\n", r.Role, r.LocalAddr(), r.Lport,
		r.RemoteAddr(), r.Rport, r.Initiator, r.Kind, r.TxBytes)
}

// Print one record per connection to local port 8080 until Ctrl-C. Needs
// root, or CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN for the snapshot of
// older connections), so it is not run as a test.
func Example() {
	s, err := session.Open(session.Options{
		Probe:   probe.Options{Filter: probe.Filter{LocalPorts: []uint16{8080}}},
		Handler: printer{},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	for _, w := range s.Warnings() {
		fmt.Println("warning:", w)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	go func() {
		<-sig
		// Run returns once the ring is drained and every record held is
		// flushed, with the error that matters.
		_ = s.Stop()
	}()
	if err := s.Run(); err != nil {
		fmt.Println(err)
	}
}

// Replay a recording through the pipeline a live session runs: the same
// records, without privileges.
func ExampleReplay() {
	f, err := os.Open("../testdata/scenarios/client-closes-first.rec")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()
	rd, err := recording.NewReader(f, probe.EventSize)
	if err != nil {
		fmt.Println(err)
		return
	}
	res, err := session.Replay(rd, session.ReplayOptions{Handler: printer{}})
	if err != nil {
		fmt.Println(err)
	}
	fmt.Println(res.Stats.Events, "events,", res.Lost.Total(), "lost")
	// Output:
	// passive 127.0.0.1:44993 -> 127.0.0.1:44744 closed by remote: graceful, 2000 bytes sent
	// listener 127.0.0.1:44993 -> 0.0.0.0:0 closed by unknown: listener_closed, 0 bytes sent
	// active 127.0.0.1:44744 -> 127.0.0.1:44993 closed by local: graceful, 1000 bytes sent
	// 12 events, 0 lost
}
