package lifecycle

// A side table: entries for some slots, by an index a slot keeps (0:
// none), in chunks taken lowest first and dropped as they empty (one
// empty chunk kept), as the records' (table.go): after a burst of
// TIME_WAIT the memory goes back while others stay. A pointer to an
// entry stays valid while others are taken.
const sideChunkLen = 256

type sideTable[T any] struct {
	chunks  []sideChunk[T]
	lowFree int // the lowest chunk that may have room
	spare   int // the empty chunk kept, -1: none (the zero table: 0 is none too, see take)
	used    int
	dropped uint64 // chunks dropped, for Released
}

type sideChunk[T any] struct {
	e    *[sideChunkLen]T // nil: dropped
	free []uint16         // offsets not taken
}

func (t *sideTable[T]) at(j int32) *T { return &t.chunks[j/sideChunkLen].e[j%sideChunkLen] }

// take takes an entry, never entry 0 (none).
func (t *sideTable[T]) take() int32 {
	if len(t.chunks) == 0 {
		t.spare = -1
	}
	for ; t.lowFree < len(t.chunks); t.lowFree++ {
		c := &t.chunks[t.lowFree]
		if c.e == nil {
			c.e = new([sideChunkLen]T)
			for k := sideChunkLen - 1; k >= 0; k-- {
				if t.lowFree > 0 || k > 0 {
					c.free = append(c.free, uint16(k))
				}
			}
		}
		if n := len(c.free); n > 0 {
			if t.spare == t.lowFree {
				t.spare = -1
			}
			off := c.free[n-1]
			c.free = c.free[:n-1]
			t.used++
			return int32(t.lowFree*sideChunkLen + int(off))
		}
	}
	t.chunks = append(t.chunks, sideChunk[T]{})
	return t.take()
}

// give lets entry j go (0: none); a chunk that empties is the spare if
// it is the lowest empty one, else dropped.
func (t *sideTable[T]) give(j int32) {
	if j == 0 {
		return
	}
	ci := int(j / sideChunkLen)
	c := &t.chunks[ci]
	c.e[j%sideChunkLen] = *new(T)
	c.free = append(c.free, uint16(j%sideChunkLen))
	t.used--
	t.lowFree = min(t.lowFree, ci)
	room := sideChunkLen
	if ci == 0 {
		room-- // entry 0
	}
	if len(c.free) < room {
		return
	}
	drop := ci
	switch {
	case t.spare < 0:
		t.spare = ci
		return
	case ci < t.spare:
		drop, t.spare = t.spare, ci
	}
	t.chunks[drop] = sideChunk[T]{}
	t.dropped++
	for len(t.chunks) > 0 && t.chunks[len(t.chunks)-1].e == nil {
		t.chunks = t.chunks[:len(t.chunks)-1]
	}
	t.lowFree = min(t.lowFree, len(t.chunks))
}
