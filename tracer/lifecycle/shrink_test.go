package lifecycle

import (
	"math/rand/v2"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// After a mass close the table keeps one empty chunk of records and the
// per-connection maps are re-created; a second wave opens as the first.
func TestMassCloseGivesMemoryBack(t *testing.T) {
	const n = 20000
	var out sink
	b := NewBuilder(Config{}, &out)
	for wave := range 2 {
		base := uint64(wave) * 10_000
		for i := 0; i < n; i++ {
			id := uint64(2*i + 1)
			a, c := st(id, base+1, CLOSE, SS), st(id, base+2, SS, EST)
			a.Sport, c.Sport = uint16(1024+i), uint16(1024+i)
			feed(b, a, c)
		}
		chunks := (n + chunkLen - 1) / chunkLen
		if b.live != n || len(b.chunks) != chunks || b.StateCount(EST) != n || len(b.byID) != n || len(b.byTuple) != n {
			t.Fatalf("wave %d open: live %d chunks %d (want %d) ESTABLISHED %d byID %d byTuple %d", wave, b.live,
				len(b.chunks), chunks, b.StateCount(EST), len(b.byID), len(b.byTuple))
		}
		b.Tick((base + 1000) * ms) // the sweep sees the peak
		released := b.Released()
		for i := 0; i < n; i++ {
			e := st(uint64(2*i+1), base+2000, EST, CLOSE)
			e.Sport = uint16(1024 + i)
			feed(b, e)
		}
		b.Tick((base + 3000) * ms) // past the reset hold, and a sweep
		if got := len(out.finished); got != (wave+1)*n {
			t.Fatalf("wave %d: %d records finished, want %d", wave, got, (wave+1)*n)
		}
		kept := 0
		for _, c := range b.chunks {
			if c.recs != nil {
				kept++
			}
		}
		if b.live != 0 || kept != 1 || len(b.chunks) != 1 || b.dropped != uint64((wave+1)*(chunks-1)) {
			t.Errorf("wave %d closed: live %d, chunks %d of which %d allocated, dropped %d (want %d)", wave, b.live,
				len(b.chunks), kept, b.dropped, (wave+1)*(chunks-1))
		}
		if len(b.byID) != 0 || b.peaks.byID != 0 || b.peaks.byTuple != 0 {
			t.Errorf("wave %d: byID %d, peaks %+v: maps not re-created", wave, len(b.byID), b.peaks)
		}
		// The chunks exactly, and at least a byte per map entry let go.
		if least := uint64((chunks-1)*chunkBytes + 2*n); b.Released()-released < least {
			t.Errorf("wave %d: released %d B, want at least %d", wave, b.Released()-released, least)
		}
	}
	if out.finished[n].ID == 0 || out.finished[2*n-1].Lport != uint16(1024+n-1) {
		t.Errorf("second wave's records: %+v ... %+v", out.finished[n].ID, out.finished[2*n-1].Lport)
	}
}

// Opens and closes in a random order across many chunks, with sweeps
// between: every record comes out once, with its own id and port, and
// the table's counts follow what is open.
func TestChunksUnderRandomChurn(t *testing.T) {
	var out sink
	b := NewBuilder(Config{}, &out)
	rng := rand.New(rand.NewPCG(1, 2))
	open := map[int]bool{}
	var ids []int
	var ts uint64 = 1
	next := 0
	closes := 0
	for step := 0; step < 60000; step++ {
		ts++
		if len(open) < 8000 && (len(open) == 0 || rng.IntN(100) < 55-step/20000*10) {
			i := next
			next++
			a, c := st(uint64(2*i+1), ts, CLOSE, SS), st(uint64(2*i+1), ts, SS, EST)
			a.Sport, c.Sport = uint16(i), uint16(i)
			feed(b, a, c)
			open[i] = true
			ids = append(ids, i)
		} else {
			// A random open one.
			j := rng.IntN(len(ids))
			i := ids[j]
			ids[j] = ids[len(ids)-1]
			ids = ids[:len(ids)-1]
			e := st(uint64(2*i+1), ts, EST, CLOSE)
			e.Sport = uint16(i)
			feed(b, e)
			delete(open, i)
			closes++
		}
		if step%5000 == 0 {
			b.Tick((ts + 10) * ms)
			ts += 1000
			if b.StateCount(EST) != len(open) || b.live != len(open) {
				t.Fatalf("step %d: ESTABLISHED %d, live %d, open %d", step, b.StateCount(EST), b.live, len(open))
			}
		}
	}
	b.Tick((ts + 10) * ms)
	if len(out.finished) != closes {
		t.Fatalf("%d finished, want %d", len(out.finished), closes)
	}
	seen := map[uint64]bool{}
	for _, r := range out.finished {
		if seen[r.ID] || r.ID != 2*uint64(r.Lport)+1 || r.Kind == KindOpen {
			t.Fatalf("record %d (port %d, %s) out twice or wrong", r.ID, r.Lport, r.Kind)
		}
		seen[r.ID] = true
	}
	b.Flush()
	if len(out.finished) != next || b.live != 0 {
		t.Fatalf("after Flush: %d finished of %d, live %d", len(out.finished), next, b.live)
	}
	if b.dropped == 0 {
		t.Errorf("no chunk was dropped")
	}
}

// Closed newest first, the chunks empty from the top: the spare ends up
// the lowest, so one connection at a time afterwards allocates no chunk.
func TestSpareIsTheLowestEmptyChunk(t *testing.T) {
	const n = 4 * chunkLen
	b := NewBuilder(Config{}, Handlers(nil))
	for i := 0; i < n; i++ {
		a, c := st(uint64(2*i+1), 1, CLOSE, SS), st(uint64(2*i+1), 2, SS, EST)
		a.Sport, c.Sport = uint16(1024+i), uint16(1024+i)
		feed(b, a, c)
	}
	for i := n - 1; i >= 0; i-- {
		e := st(uint64(2*i+1), 3, EST, CLOSE)
		e.Sport = uint16(1024 + i)
		feed(b, e)
	}
	b.Tick(1000 * ms)
	if b.live != 0 || b.spare != 0 || len(b.chunks) != 1 || b.chunks[0].recs == nil || b.dropped != 3 {
		t.Fatalf("live %d spare %d chunks %d dropped %d", b.live, b.spare, len(b.chunks), b.dropped)
	}
	ts := uint64(2000)
	evs := []probe.Event{st(1, 0, CLOSE, SS), st(1, 0, SS, EST), st(1, 0, EST, CLOSE)}
	allocs := testing.AllocsPerRun(100, func() {
		ts += 10
		for k := range evs {
			evs[k].TsNs = (ts + uint64(k)) * ms
			b.Event(&evs[k])
		}
		b.Tick((ts + 5) * ms)
	})
	if allocs != 0 || b.dropped != 3 {
		t.Errorf("%.1f allocations per connection, %d chunks dropped (want 0 and 3)", allocs, b.dropped)
	}
}
