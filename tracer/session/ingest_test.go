package session

import (
	"syscall"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

type countClosed struct{ n int }

func (c *countClosed) Closed(*lifecycle.Record)   { c.n++ }
func (c *countClosed) Finished(*lifecycle.Record) {}

// The path every live and replayed input takes does not allocate per
// event once the builder's tables have grown: refused connects, one after
// another, with a clock tick every 50 of them.
func TestApplyDoesNotAllocate(t *testing.T) {
	var h countClosed
	in := newIngest(&h, lifecycle.Config{}, func(*probe.Event) {})
	var x recording.Input
	var id, ts uint64 = 0, 1_000_000_000
	pass := func() {
		for i := 0; i < 1000; i++ {
			id++
			x.Kind = recording.KindEvent
			x.Event = probe.Event{ConnId: id << 12, Family: probe.AFInet, Type: uint8(probe.TypeState), Netns: 1,
				Sport: uint16(30000 + i), Dport: 9, Owner: uint8(probe.OwnerTask), Pid: 42}
			for _, tr := range [][2]probe.State{{probe.StateClose, probe.StateSynSent}, {probe.StateSynSent, probe.StateClose}} {
				ts += 100_000
				x.Event.TsNs, x.Event.Oldstate, x.Event.Newstate = ts, uint8(tr[0]), uint8(tr[1])
				if tr[1] == probe.StateClose {
					x.Event.SkErr = uint16(syscall.ECONNREFUSED)
				}
				if err := in.apply(&x); err != nil {
					t.Fatal(err)
				}
			}
			if i%50 == 49 {
				x = recording.Input{Kind: recording.KindTick, Tick: ts}
				if err := in.apply(&x); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	pass()
	pass()
	allocs := testing.AllocsPerRun(5, pass)
	t.Logf("%.1f allocations per pass, %d closed", allocs, h.n)
	if h.n < 6000 {
		t.Fatalf("%d connections closed, want every one of the passes'", h.n)
	}
	if perEvent := allocs / 2000; perEvent > 0.001 {
		t.Errorf("%.4f allocations per event (%.0f per pass of 2000), want none", perEvent, allocs)
	}
}

type lastFinished struct{ r lifecycle.Record }

func (l *lastFinished) Closed(*lifecycle.Record)     {}
func (l *lastFinished) Finished(r *lifecycle.Record) { l.r = *r }

// A cgroup input names the container of the records of its connections,
// live and replayed alike.
func TestCgroupInputNamesContainer(t *testing.T) {
	var h lastFinished
	in := newIngest(&h, lifecycle.Config{}, nil)
	const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	path := "/system.slice/docker-" + id + ".scope"
	inputs := []recording.Input{
		{Kind: recording.KindCgroup, Cgroup: recording.Cgroup{ID: 77, Path: path}},
		{Kind: recording.KindEvent, Event: probe.Event{ConnId: 1 << 12, Family: probe.AFInet, Type: uint8(probe.TypeState), TsNs: 1e9,
			Oldstate: uint8(probe.StateClose), Newstate: uint8(probe.StateSynSent), Owner: uint8(probe.OwnerTask), CgroupId: 77}},
		{Kind: recording.KindEvent, Event: probe.Event{ConnId: 1 << 12, Family: probe.AFInet, Type: uint8(probe.TypeState), TsNs: 2e9,
			Oldstate: uint8(probe.StateSynSent), Newstate: uint8(probe.StateClose), Owner: uint8(probe.OwnerTask), CgroupId: 77}},
		{Kind: recording.KindTick, Tick: 3e9},
	}
	for i := range inputs {
		if err := in.apply(&inputs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if h.r.Cgroup != path || h.r.Container != "docker:"+id {
		t.Errorf("record cgroup %q container %q", h.r.Cgroup, h.r.Container)
	}
}
