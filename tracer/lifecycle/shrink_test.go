package lifecycle

import "testing"

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
