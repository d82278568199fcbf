package lifecycle

// What few records need, 24 B: a joined seed's or rejoined record's
// other connection id, when a dump found a record in its state, and the
// lost-event count at a record's start once events were lost. Kept in a
// side table (sidetable.go), taken at the first write of something other
// than zero (rareOf) and let go with the record.

type rare struct {
	alias       uint64 // a seeded record's kernel connection id, once joined
	foundAt     uint64 // when a dump found it in its state (entry unknown)
	lostAtStart uint64
}

const rareChunkBytes = sideChunkLen * 24

// rr is slot c's rare entry, or noRare when it has none: to read only
// (a test checks noRare stays zero).
func (b *Builder) rr(c *slot) *rare {
	if c.rr == 0 {
		return &noRare
	}
	return b.rares.at(c.rr)
}

var noRare rare

// rareOf is slot c's rare entry, taken now if it has none: to write.
func (b *Builder) rareOf(c *slot) *rare {
	if c.rr == 0 {
		c.rr = b.rares.take()
	}
	return b.rares.at(c.rr)
}

// setLostAtStart keeps the lost-event count at the record's start.
func (b *Builder) setLostAtStart(c *slot) {
	if b.lost != 0 {
		b.rareOf(c).lostAtStart = b.lost
	}
}
