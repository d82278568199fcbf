package lifecycle

import "unsafe"

// Giving memory back after a mass close. A Go map never shrinks: one that
// held 100,000 connections keeps their room after they are gone, and the
// table's chunks go as they empty (table.go). The maps that hold an entry
// per connection are re-created, at the one-second sweep, once they hold a
// quarter of the most they held since they were last made. Released says
// how much went, so a live session can hand it to the OS at once.

// shrinkMin is the size below which a map is not worth re-creating.
const shrinkMin = 4096

// mapPeaks are the sizes the per-connection maps reached, at sweeps.
type mapPeaks struct {
	byID, byTuple, passive, handshake, timeWait, orphans, orphanFlows int
}

// Released is how many bytes of records and map room the builder let go
// of since it started (map room estimated from the entries' sizes).
func (b *Builder) Released() uint64 { return b.released }

// shrink re-creates the maps that emptied out and counts what went.
func (b *Builder) shrink() {
	p := &b.peaks
	b.byID = shrunk(b.byID, &p.byID, &b.released)
	b.byTuple = shrunk(b.byTuple, &p.byTuple, &b.released)
	b.passive = shrunk(b.passive, &p.passive, &b.released)
	b.handshake = shrunk(b.handshake, &p.handshake, &b.released)
	b.timeWait = shrunk(b.timeWait, &p.timeWait, &b.released)
	b.orphans = shrunk(b.orphans, &p.orphans, &b.released)
	b.orphanFlows = shrunk(b.orphanFlows, &p.orphanFlows, &b.released)
	b.shrinkOwners()

	if n := b.closings.dropped; n > b.closingsSeen {
		b.released += (n - b.closingsSeen) * uint64(closingChunkBytes)
		b.closingsSeen = n
	}
	if n := b.rares.dropped; n > b.raresSeen {
		b.released += (n - b.raresSeen) * uint64(rareChunkBytes)
		b.raresSeen = n
	}
	if b.dropped > b.droppedSeen {
		b.released += (b.dropped - b.droppedSeen) * uint64(chunkBytes)
		b.droppedSeen = b.dropped
	}
}

// shrunk returns m, or a copy of it sized for what it holds now when it
// holds a quarter of its peak or less.
func shrunk[K comparable, V any](m map[K]V, peak *int, released *uint64) map[K]V {
	n := len(m)
	if n > *peak {
		*peak = n
	}
	if *peak < shrinkMin || n > *peak/4 {
		return m
	}
	var k K
	var v V
	*released += uint64(*peak-n) * uint64(unsafe.Sizeof(k)+unsafe.Sizeof(v)+1)
	*peak = n
	out := make(map[K]V, n)
	for key, val := range m {
		out[key] = val
	}
	return out
}
