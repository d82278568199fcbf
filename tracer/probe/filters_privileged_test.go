package probe_test

// Privileged tests of the load-time filters: a filtered probe sees exactly
// what the unfiltered one beside it selects.

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// filterCase is a filtered probe beside the unfiltered one: it must see
// exactly the unfiltered events the predicate selects.
type filterCase struct {
	name   string
	filter func(env *filterEnv) probe.Filter
	want   func(env *filterEnv, e *probe.Event) bool
}

// filterEnv is the traffic of the filter tests, all in one namespace: an
// IPv4 and an IPv6 exchange between helper processes (the IPv4 client in
// a cgroup of its own) and an IPv4 exchange inside the test process.
type filterEnv struct {
	ns          *nettest.NS
	srv4, srv6  *nettest.Peer
	cli4, cli6  *nettest.Peer
	cgroup      string
	cgroupID    uint64
	cgroupLevel uint32
}

// Fixed ports: nothing else listens in a fresh namespace, and the
// filtered probe must be loaded before the first listen().
const port4, port6, portSelf = 20004, 20006, 20008

// (f) every kernel filter passes exactly the events it should. The seven
// filtered probes and one unfiltered probe watch the same traffic at the
// same time, and each filtered probe is compared with the unfiltered
// probe's events the predicate selects. Every filter is its own load (the
// filters are constants compiled into the program); the eight loads are
// most of the test's time in an emulated VM, so the filtered ones load
// concurrently, and one exchange serves them all.
func TestKernelFilters(t *testing.T) {
	nettest.RequireBPF(t)
	cases := []filterCase{
		{"lport", func(env *filterEnv) probe.Filter { return probe.Filter{LocalPorts: []uint16{port4, 1}} },
			func(env *filterEnv, e *probe.Event) bool { return e.Sport == port4 }},
		{"rport", func(env *filterEnv) probe.Filter { return probe.Filter{RemotePorts: []uint16{port6, portSelf}} },
			func(env *filterEnv, e *probe.Event) bool { return e.Dport == port6 || e.Dport == portSelf }},
		{"ipv6", func(env *filterEnv) probe.Filter { return probe.Filter{Family: probe.AFInet6} },
			func(env *filterEnv, e *probe.Event) bool { return e.Family == probe.AFInet6 }},
		{"ipv4", func(env *filterEnv) probe.Filter { return probe.Filter{Family: probe.AFInet} },
			func(env *filterEnv, e *probe.Event) bool { return e.Family == probe.AFInet }},
		{"pid", func(env *filterEnv) probe.Filter { return probe.Filter{PID: uint32(env.srv4.Pid)} },
			func(env *filterEnv, e *probe.Event) bool { return int(e.Pid) == env.srv4.Pid }},
		{"cgroup", func(env *filterEnv) probe.Filter {
			return probe.Filter{CgroupID: env.cgroupID, CgroupLevel: env.cgroupLevel}
		}, func(env *filterEnv, e *probe.Event) bool { return int(e.Pid) == env.cli4.Pid }},
		{"other-netns", func(env *filterEnv) probe.Filter { return probe.Filter{NetNS: 1} },
			func(env *filterEnv, e *probe.Event) bool { return false }},
	}
	ns := nettest.NewNS(t)
	env := &filterEnv{ns: ns}
	env.cgroup, env.cgroupID, env.cgroupLevel = makeCgroup(t)
	all := openProbe(t, probe.Options{Filter: probe.Filter{NetNS: ns.Inode}})
	filtered := make([]*nettest.Collector, len(cases))
	env.runTraffic(t, all, func() {
		probes := make([]*probe.Probe, len(cases))
		errs := make([]error, len(cases))
		var wg sync.WaitGroup
		for i, tc := range cases {
			f := tc.filter(env)
			if f.NetNS == 0 {
				f.NetNS = ns.Inode
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				probes[i], errs[i] = probe.Open(probe.Options{Filter: f})
			}()
		}
		wg.Wait()
		for i, p := range probes {
			if p != nil {
				filtered[i] = nettest.Collect(t, p)
			}
		}
		for i, err := range errs {
			if err != nil {
				t.Fatalf("open the %s probe: %v", cases[i].name, err)
			}
		}
	})
	// The traffic is over (every socket of it closed, the TIME_WAITs
	// last a minute longer): stopping the probes one after another loses
	// nothing any of them would have seen.
	got := make([][]probe.Event, len(cases))
	for i, c := range filtered {
		got[i] = c.Stop(t)
	}
	seen := all.Stop(t)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var want []probe.Event
			for j := range seen {
				if tc.want(env, &seen[j]) {
					want = append(want, seen[j])
				}
			}
			if tc.name != "other-netns" && (len(want) == 0 || len(want) == len(seen)) {
				t.Fatalf("the traffic does not exercise this filter: %d of %d events selected:\n%s", len(want), len(seen), nettest.Dump(seen))
			}
			if !sameEvents(got[i], want) {
				t.Errorf("filtered probe saw:\n%swant:\n%s", nettest.Dump(got[i]), nettest.Dump(want))
			}
		})
	}
}

// runTraffic starts held helpers, lets open load the filtered probe (a
// pid filter needs their pids), then makes the three exchanges and waits
// until the unfiltered probe saw every socket close.
func (env *filterEnv) runTraffic(t *testing.T, all *nettest.Collector, open func()) {
	t.Helper()
	ns := env.ns
	helper := func(comm, role, network, addr string, send int, cgroup string) *nettest.Peer {
		return ns.StartHelper(t, nettest.Helper{Comm: comm, Role: role, Network: network, Addr: addr, Send: send, Cgroup: cgroup, Hold: true})
	}
	env.srv4 = helper("tcpfsm-srv4", "server", "tcp4", "127.0.0.1:"+strconv.Itoa(port4), 100, "")
	env.srv6 = helper("tcpfsm-srv6", "server", "tcp6", "[::1]:"+strconv.Itoa(port6), 200, "")
	env.cli4 = helper("tcpfsm-cli4", "client", "tcp4", "127.0.0.1:"+strconv.Itoa(port4), 10, env.cgroup)
	env.cli6 = helper("tcpfsm-cli6", "client", "tcp6", "[::1]:"+strconv.Itoa(port6), 20, "")
	open()

	for _, srv := range []*nettest.Peer{env.srv4, env.srv6} {
		srv.Release(t)
		srv.Port(t) // listening
	}
	env.cli4.Release(t)
	env.cli6.Release(t)

	ln := ns.Listen(t, "tcp4", "127.0.0.1:"+strconv.Itoa(portSelf))
	go func() {
		if c, err := ln.Accept(); err == nil {
			// To the client's close; the transitions are what is checked.
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := ns.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	for _, p := range []*nettest.Peer{env.cli4, env.cli6, env.srv4, env.srv6} {
		p.Done(t)
	}
	all.WaitFor(t, "all sockets closed", func(ev []probe.Event) bool {
		n := 0
		for i := range ev {
			if ev[i].EventType() == probe.TypeState && ev[i].NewState() == probe.StateClose {
				n++
			}
		}
		return n >= 8 // two helper listeners, three clients, three accepted
	})
	ln.Close()
	all.WaitFor(t, "the last listener closed", func(ev []probe.Event) bool { return nettest.Closed(ev, portSelf, 0) })
}

// makeCgroup creates a cgroup v2 for the test and returns its directory,
// id and level.
func makeCgroup(t *testing.T) (string, uint64, uint32) {
	root, err := cgroups.Mount()
	if err != nil {
		t.Fatalf("cgroup v2: %v", err)
	}
	dir, err := os.MkdirTemp(root, "tcpfsm-test-")
	if err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The helpers in it have exited by now; rmdir fails while any lives.
		for i := 0; i < 50 && os.Remove(dir) != nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	})
	id, level, err := probe.CgroupFilter(filepath.Base(dir))
	if err != nil {
		t.Fatal(err)
	}
	return dir, id, level
}

// sameEvents compares what two probes saw of the same traffic. Each probe
// numbers connections and reads the clock on its own, and events from
// different CPUs may be ordered differently in their rings, so compare
// the rest of every event as a multiset. Also each probe's own: how it
// learned an owner (the pid and comm are compared). Where the kernel runs
// fexit/inet_csk_accept, every probe's program runs in turn when accept()
// returns (the one attached first last), and the client's FIN may move
// the accepted socket to CLOSE_WAIT in between: probes whose program ran
// already say the owner was carried from accept, the others that it came
// from the listener (seen on x86-64 6.1 with eight probes attached).
func sameEvents(a, b []probe.Event) bool {
	if len(a) != len(b) {
		return false
	}
	key := func(e probe.Event) string {
		e.ConnId, e.TsNs, e.DeltaNs, e.Owner = 0, 0, 0, 0
		return string(e.Bytes())
	}
	count := map[string]int{}
	for _, e := range a {
		count[key(e)]++
	}
	for _, e := range b {
		count[key(e)]--
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return true
}
