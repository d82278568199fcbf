package lifecycle

import (
	"encoding/binary"
	"math/bits"
)

// The indexes by endpoints, keyed by a hash of the tuple instead of the
// tuple (44 B): a map entry of a 64-bit hash (a key64, table.go) costs
// about 17 B per connection where one of the tuple cost 73. The records
// hold their tuple, so a hit is checked against it, and two tuples of
// one hash are told apart.
//
// byTuple: every open record whose tuple has the hash, chained newest
// first through tupNext; records sharing a tuple (listeners with
// SO_REUSEPORT) keep that order among themselves. The first accepted
// connection of a tuple is registered, to tell a twin: marked fPassive,
// and found in byTuple while open, in passive after (closed and waiting
// out its reset hold, or an orphan).

// tupleHash mixes the tuple's words with the builder's random seed (as
// wyhash does: the halves of 64x64-bit products), so chains stay short
// whatever endpoints a peer picks. maphash.Comparable did it at three
// times the cost.
func (b *Builder) tupleHash(k tupleKey) key64 {
	le := binary.LittleEndian
	const m1, m2, m3 = 0xa0761d6478bd642f, 0xe7037ed1a0b428db, 0x8ebc6af09c88c6e3
	s := b.hashSeed
	h := mix(le.Uint64(k.laddr[:8])^s^m1, le.Uint64(k.laddr[8:])^m2) ^
		mix(le.Uint64(k.raddr[:8])^s^m3, le.Uint64(k.raddr[8:])^m1) ^
		mix(uint64(k.netns)<<32|uint64(k.lport)<<16|uint64(k.rport)^s, uint64(k.family)^m2)
	return k64(mix(h^m3, s^m1))
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// index and unindex keep the open records by their endpoints.
func (b *Builder) index(i int32) {
	r := b.rec(i)
	h := b.tupleHash(recordKey(r))
	if head, ok := b.byTuple[h]; ok {
		r.tupNext = head
	} else {
		r.tupNext = -1
	}
	b.byTuple[h] = i
	r.set(fIndexed, true)
}

func (b *Builder) unindex(i int32) {
	r := b.rec(i)
	if !r.is(fIndexed) {
		return
	}
	r.set(fIndexed, false)
	if r.is(fPassive) {
		b.passive[recordKey(r)] = i
	}
	h := b.tupleHash(recordKey(r))
	head := b.byTuple[h]
	if head == i {
		if r.tupNext >= 0 {
			b.byTuple[h] = r.tupNext
		} else {
			delete(b.byTuple, h)
		}
		return
	}
	for j := head; j >= 0; j = b.rec(j).tupNext {
		if b.rec(j).tupNext == i {
			b.rec(j).tupNext = r.tupNext
			return
		}
	}
}

// tupleHead is the first (newest) open record with these endpoints, -1
// for none; tupleNext the one after record i.
func (b *Builder) tupleHead(k tupleKey) int32 {
	head, ok := b.byTuple[b.tupleHash(k)]
	if !ok {
		return -1
	}
	return b.sameTuple(head, k)
}

func (b *Builder) tupleNext(i int32, k tupleKey) int32 { return b.sameTuple(b.rec(i).tupNext, k) }

// sameTuple is the first record from i on its chain with tuple k, -1 for none.
func (b *Builder) sameTuple(i int32, k tupleKey) int32 {
	for ; i >= 0; i = b.rec(i).tupNext {
		if recordKey(b.rec(i)) == k {
			return i
		}
	}
	return -1
}

// passiveOf is the accepted connection registered for k: the record
// marked fPassive among the open ones with these endpoints, or in
// passive once it is not open.
func (b *Builder) passiveOf(k tupleKey) (int32, bool) {
	for i := b.tupleHead(k); i >= 0; i = b.tupleNext(i, k) {
		if b.rec(i).is(fPassive) {
			return i, true
		}
	}
	i, ok := b.passive[k]
	return i, ok
}

// setPassive registers record i (open) for k unless one is.
func (b *Builder) setPassive(k tupleKey, i int32) {
	if _, ok := b.passiveOf(k); !ok {
		b.rec(i).set(fPassive, true)
	}
}

// dropPassive unregisters record i if it is k's.
func (b *Builder) dropPassive(k tupleKey, i int32) {
	r := b.rec(i)
	if !r.is(fPassive) {
		return
	}
	r.set(fPassive, false)
	if j, ok := b.passive[k]; ok && j == i {
		delete(b.passive, k)
	}
}
