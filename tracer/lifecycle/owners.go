package lifecycle

// The owners of the records, shared: a slot names its owner (process,
// comm, cgroup; 28 B) by an index into the builder's table, which holds
// each distinct owner once, counted by the slots that name it.

type ownerKey struct {
	cgroupID uint64
	pid      uint32
	comm     [16]byte
}

type ownerEntry struct {
	ownerKey
	refs int32
}

// setOwner makes k slot c's owner.
func (b *Builder) setOwner(c *slot, k ownerKey) {
	if b.owners[c.own].ownerKey == k {
		return
	}
	var j int32
	if k != (ownerKey{}) {
		// The last owner set is most often the next one's: no lookup.
		if j = b.lastOwner; b.owners[j].ownerKey != k {
			var ok bool
			if j, ok = b.ownerOf[k]; !ok {
				j = b.newOwner(k)
			}
			b.lastOwner = j
		}
		b.owners[j].refs++
	}
	b.unrefOwner(c.own)
	c.own = j
}

func (b *Builder) newOwner(k ownerKey) int32 {
	var j int32
	if n := len(b.ownerFree); n > 0 {
		j = b.ownerFree[n-1]
		b.ownerFree = b.ownerFree[:n-1]
	} else {
		j = int32(len(b.owners))
		b.owners = append(b.owners, ownerEntry{})
	}
	b.owners[j].ownerKey = k
	b.ownerOf[k] = j
	return j
}

// unrefOwner lets go of one slot's reference to owner j (0: none).
func (b *Builder) unrefOwner(j int32) {
	if j == 0 {
		return
	}
	e := &b.owners[j]
	if e.refs--; e.refs > 0 {
		return
	}
	delete(b.ownerOf, e.ownerKey)
	*e = ownerEntry{}
	b.ownerFree = append(b.ownerFree, j)
}

// cgroupID is slot c's owner's cgroup.
func (b *Builder) cgroupID(c *slot) uint64 { return b.owners[c.own].cgroupID }

// shrinkOwners lets the table go once no slot names an owner.
func (b *Builder) shrinkOwners() {
	if len(b.ownerOf) == 0 && len(b.owners) > shrinkMin {
		b.owners, b.ownerFree, b.lastOwner = b.owners[:1:1], nil, 0
		b.ownerOf = map[ownerKey]int32{}
	}
}
