package probe_test

import (
	"errors"
	"fmt"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Print the next ten TCP state transitions of connections to or from
// local port 443. Needs root, or CAP_BPF and CAP_PERFMON, so it is not
// run as a test.
func Example() {
	p, err := probe.Open(probe.Options{Filter: probe.Filter{LocalPorts: []uint16{443}}})
	if err != nil {
		fmt.Println(err) // probe.Preflight says what this host lacks
		return
	}
	defer p.Close()

	errEnough := errors.New("ten events")
	var e probe.Event // reused: decoding does not allocate
	n := 0
	err = p.Read(func(raw []byte) error {
		if err := probe.Decode(raw, &e); err != nil {
			return err
		}
		fmt.Printf("%s %d %s %s:%d -> %s:%d %s -> %s\n", e.EventType(), e.Pid, e.CommBytes(),
			e.LocalAddr(), e.Sport, e.RemoteAddr(), e.Dport, e.OldState(), e.NewState())
		if n++; n == 10 {
			return errEnough
		}
		return nil
	}, nil)
	if err != nil && !errors.Is(err, errEnough) {
		fmt.Println(err)
	}
	lost, _ := p.Lost()
	fmt.Println("lost:", lost.Total())
}
