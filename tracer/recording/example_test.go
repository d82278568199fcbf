package recording_test

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

// Read a recording's inputs back, decoded: here the transitions of a
// connect() that was refused, and what else the tracer fed its builder.
func ExampleReader() {
	f, err := os.Open("../testdata/scenarios/refused.rec")
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
	fmt.Println("kernel", rd.Header().KernelRelease)
	var in recording.Input // reused: decoding does not allocate
	count := map[recording.Kind]int{}
	var features probe.Features
	for {
		err := rd.Read(&in)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Println(err) // names the offset of the damage
			return
		}
		count[in.Kind]++
		if in.Kind == recording.KindFeatures {
			features = in.Features
		}
		if e := &in.Event; in.Kind == recording.KindEvent {
			fmt.Printf("%s port %d -> %d: %s -> %s\n", e.EventType(), e.Sport, e.Dport, e.OldState(), e.NewState())
		}
	}
	fmt.Printf("%d events, %d cgroup paths, %d clock ticks, %d sockets; exact TIME_WAIT: %v\n",
		count[recording.KindEvent], count[recording.KindCgroup], count[recording.KindTick], count[recording.KindSocket],
		features.TimeWait)
	// Output:
	// kernel 6.18.44-fc-v595
	// state port 55620 -> 1: CLOSE -> SYN_SENT
	// reset_received port 55620 -> 1: SYN_SENT -> SYN_SENT
	// state port 55620 -> 1: SYN_SENT -> CLOSE
	// 3 events, 1 cgroup paths, 43 clock ticks, 0 sockets; exact TIME_WAIT: false
}
