package jsonl

import "math/bits"

// appendUint is strconv.AppendUint(b, v, 10) with the digits written in
// place, not formatted into a buffer of their own and copied: a record
// has some twenty numbers, and the copy was most of their cost.
func appendUint(b []byte, v uint64) []byte {
	if v < 10 {
		return append(b, byte('0'+v))
	}
	n := decimalLen(v)
	l := len(b)
	if cap(b)-l < n {
		b = append(b, make([]byte, n)...)[:l]
	}
	b = b[:l+n]
	d := b[l:]
	i := n
	for v >= 100 {
		q := v / 100
		r := v - q*100
		i -= 2
		d[i+1] = digits2[2*r+1]
		d[i] = digits2[2*r]
		v = q
	}
	if v >= 10 {
		d[1] = digits2[2*v+1]
		d[0] = digits2[2*v]
	} else {
		d[0] = byte('0' + v)
	}
	return b
}

// decimalLen is how many decimal digits v has, v >= 1.
func decimalLen(v uint64) int {
	n := bits.Len64(v) * 1233 >> 12 // about log10(2) * bits
	if v >= pow10[n] {
		n++
	}
	return n
}

var pow10 = [...]uint64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
	1e16, 1e17, 1e18, 1e19}
