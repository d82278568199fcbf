package connview

import (
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// The time the builder's lock is held by a reader, with 100,000 open
// connections: 90,000 established, 10,000 in CLOSE_WAIT. What the
// benchmarks time is exactly what runs under the lock (Select, SelectOne,
// Stuck.Count, Counts.Read); converting and encoding come after it.
// BENCHMARKS.md keeps the numbers.
func benchBuilder(b *testing.B) *feeder {
	b.Helper()
	f := newFeeder(nil)
	for i := 0; i < 100_000; i++ {
		c := conn{id: uint64(i + 1), lport: 80, rport: uint16(1024 + i%60000), pid: 200 + uint32(i%7), comm: "server", cgroup: uint64(i % 5)}
		at := uint64(i / 100)
		f.accepted(c, 10+at)
		if i%10 == 0 {
			f.ev(c, 2000+at, probe.StateEstablished, probe.StateCloseWait, 0, uint64(i), 100)
		}
	}
	f.tick(5000)
	if n := f.b.OpenCount(); n != 100_000 {
		b.Fatalf("%d open", n)
	}
	return f
}

func BenchmarkSelect100k(b *testing.B) {
	f := benchBuilder(b)
	th := DefaultThresholds()
	for _, c := range []struct {
		name string
		q    Query
	}{
		{"default", Query{}},
		{"limit10000", Query{Limit: MaxLimit}},
		{"close_wait", Query{States: []probe.State{probe.StateCloseWait}}},
		{"bytes", Query{Sort: SortBytes}},
		{"search", Query{Search: "serv"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var s Selection
			b.ReportAllocs()
			for b.Loop() {
				s.Select(f.b, &c.q, &th, 6000*ms)
			}
		})
	}
}

func BenchmarkSelectOne100k(b *testing.B) {
	f := benchBuilder(b)
	var o One
	b.ReportAllocs()
	for b.Loop() {
		o.SelectOne(f.b, 50_000, 6000*ms)
	}
}

func BenchmarkStuckCount100k(b *testing.B) {
	f := benchBuilder(b)
	th := DefaultThresholds()
	for _, c := range []struct {
		name string
		by   GroupBy
	}{{"unlabelled", GroupBy{}}, {"port_comm_container", GroupBy{true, true, true}}} {
		b.Run(c.name, func(b *testing.B) {
			var s Stuck
			b.ReportAllocs()
			for b.Loop() {
				s.Count(f.b, &th, c.by, 6000*ms)
			}
		})
	}
}
