package jsonl

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// AppendRFC3339Nano writes the bytes time.Format does, for every int64.
func TestAppendUnixNanoIsRFC3339Nano(t *testing.T) {
	day := int64(86400e9)
	cases := []int64{
		0, 1, -1, 1e9, -1e9, 1e9 - 1, 1e9 + 1, 999_999_999, -999_999_999,
		day - 1, day, -day, -day - 1, -day + 1,
		math.MinInt64, math.MinInt64 + 1, math.MaxInt64, math.MaxInt64 - 1,
		time.Date(2026, 12, 2, 20, 30, 0, 500_000_000, time.UTC).UnixNano(), // one digit of fraction
		time.Date(2026, 12, 2, 20, 30, 0, 120_000, time.UTC).UnixNano(),
		time.Date(2000, 2, 29, 23, 59, 59, 999_999_999, time.UTC).UnixNano(), // leap day, 400-year leap
		time.Date(2000, 3, 1, 0, 0, 0, 0, time.UTC).UnixNano(),
		time.Date(1900, 2, 28, 12, 0, 0, 10, time.UTC).UnixNano(), // no leap day: 100-year rule
		time.Date(1900, 3, 1, 0, 0, 0, 0, time.UTC).UnixNano(),
		time.Date(2100, 2, 28, 23, 59, 59, 1, time.UTC).UnixNano(),
		time.Date(2100, 3, 1, 0, 0, 0, 0, time.UTC).UnixNano(),
		time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC).UnixNano(),
		time.Date(2023, 12, 31, 23, 59, 59, 0, time.UTC).UnixNano(),
		time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(),
		time.Date(1969, 12, 31, 23, 59, 59, 999_999_999, time.UTC).UnixNano(),
		time.Date(1700, 1, 1, 0, 0, 0, 100, time.UTC).UnixNano(),
		time.Date(2262, 1, 1, 0, 0, 0, 1_000, time.UTC).UnixNano(),
	}
	// Every second of fraction length, and a zone: the wall time is the
	// same instant whatever the zone it was made in.
	zone := time.FixedZone("UTC+5:30", 5*3600+1800)
	for digits, f := 0, int64(1e9); digits <= 9; digits, f = digits+1, f/10 {
		cases = append(cases, time.Date(2026, 11, 25, 12, 0, 0, int(123_456_789/f*f), zone).UnixNano())
	}
	// Every day of four leap cycles, at a few times of day, and random
	// instants over the whole range.
	start := time.Date(1999, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	for i := int64(0); i < 4*366*4+60; i++ {
		cases = append(cases, start+i*day, start+i*day+day/2+7, start+i*day-1)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200_000 {
		cases = append(cases, int64(rng.Uint64()))
	}
	for i := range 100_000 {
		cases = append(cases, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()+rng.Int64N(10*365*day)+int64(i))
	}
	var buf []byte
	for _, ns := range cases {
		want := time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
		buf = AppendRFC3339Nano(buf[:0], ns)
		if string(buf) != want {
			t.Fatalf("AppendRFC3339Nano(%d) = %q, want %q", ns, buf, want)
		}
	}
	// It appends.
	if got, want := string(AppendRFC3339Nano([]byte(`"x`), 0)), `"x1970-01-01T00:00:00Z`; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func BenchmarkAppendUnixNano(b *testing.B) {
	buf := make([]byte, 0, 64)
	ns := time.Date(2026, 12, 2, 20, 30, 0, 123_456_789, time.UTC).UnixNano()
	b.Run("AppendRFC3339Nano", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			buf = AppendRFC3339Nano(buf[:0], ns+int64(i)*1013)
		}
	})
	b.Run("AppendFormat", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			buf = time.Unix(0, ns+int64(i)*1013).UTC().AppendFormat(buf[:0], time.RFC3339Nano)
		}
	})
}
