package lifecycle

import (
	"encoding/binary"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// synthDump is a dump of n established loopback connections.
func synthDump(n int, at uint64, p Purpose) []Socket {
	socks := make([]Socket, n)
	for i := range socks {
		s := &socks[i]
		*s = Socket{Time: at, NetNS: 7, Family: probe.AFInet, State: probe.StateEstablished, Purpose: p,
			Lport: uint16(10000 + i%50000), Rport: uint16(80 + i/50000)}
		s.Laddr[0], s.Raddr[0] = 127, 127
		binary.BigEndian.PutUint16(s.Laddr[2:], uint16(i))
		s.Laddr[3] = 1
	}
	return socks
}

// BenchmarkSeed: the snapshot at start seeding n records.
func BenchmarkSeed50k(b *testing.B) {
	socks := synthDump(50_000, 1, PurposeSnapshot)
	b.ReportAllocs()
	for b.Loop() {
		bl := NewBuilder(Config{}, Handlers(nil))
		bl.Reserve(len(socks))
		for i := range socks {
			bl.Observe(&socks[i])
		}
		bl.DumpDone(7, PurposeSnapshot, 2)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/50_000, "ns/socket")
}

// BenchmarkReconcile100k: one reconciliation of 100,000 sockets against
// 100,000 records that all match (the steady state): the builder's part,
// which holds its lock chunk by chunk.
func BenchmarkReconcile100k(b *testing.B) {
	const n = 100_000
	bl := NewBuilder(Config{}, Handlers(nil))
	seed := synthDump(n, 1, PurposeSnapshot)
	for i := range seed {
		bl.Observe(&seed[i])
	}
	bl.DumpDone(7, PurposeSnapshot, 1)
	rec := synthDump(n, 0, PurposeReconcile)
	at := uint64(10)
	b.ReportAllocs()
	for b.Loop() {
		at++
		bl.DumpDone(7, PurposeReconcileBegin, at)
		for i := range rec {
			rec[i].Time = at
			bl.Observe(&rec[i])
		}
		bl.DumpDone(7, PurposeReconcile, at)
	}
	if st := bl.Stats(); st.Reconciled != [ReconcileActions]uint64{} || bl.StateCount(probe.StateEstablished) != n {
		b.Fatalf("repairs %v, established %d", st.Reconciled, bl.StateCount(probe.StateEstablished))
	}
}
