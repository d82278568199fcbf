package jsonl

import (
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
)

// appendUint writes what strconv.AppendUint does: every power of ten and
// its neighbours, every value below 100,000, random values of every
// length; with and without room left in the slice.
func TestAppendUintIsStrconv(t *testing.T) {
	var cases []uint64
	for v := uint64(0); v < 100_000; v++ {
		cases = append(cases, v)
	}
	for p := uint64(1); p <= 1e19; p *= 10 {
		cases = append(cases, p-1, p, p+1, 2*p-1, 9*p, 9*p+p-1)
		if p == 1e19 {
			break
		}
	}
	cases = append(cases, math.MaxUint64, math.MaxUint64-1, math.MaxUint32, math.MaxUint32+1, 1<<63, 1<<63-1)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 100_000 {
		cases = append(cases, rng.Uint64()>>rng.UintN(64))
	}
	roomy := make([]byte, 0, 64)
	for _, v := range cases {
		want := strconv.AppendUint([]byte("x"), v, 10)
		if got := appendUint([]byte("x"), v); string(got) != string(want) { // no room: it grows
			t.Fatalf("appendUint(%d) = %q, want %q", v, got, want)
		}
		if got := appendUint(append(roomy[:0], 'x'), v); string(got) != string(want) {
			t.Fatalf("appendUint(%d) with room = %q, want %q", v, got, want)
		}
	}
}

func BenchmarkAppendUint(b *testing.B) {
	buf := make([]byte, 0, 64)
	for _, v := range []uint64{7, 80, 4026531840, 1_764_000_000_123_456_789, 9_223_372_036_854_775_807} {
		b.Run(strconv.FormatUint(v, 10)+"/appendUint", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				buf = appendUint(buf[:0], v+uint64(i&1))
			}
		})
		b.Run(strconv.FormatUint(v, 10)+"/strconv", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				buf = strconv.AppendUint(buf[:0], v+uint64(i&1), 10)
			}
		})
	}
}
