package probe

import (
	"errors"
	"testing"
)

// The main program's misses less the nested instance's handled runs, plus
// every other program's misses; the nested instance's own are not lost.
func TestUncaught(t *testing.T) {
	for _, tc := range []struct {
		name    string
		misses  map[string]uint64
		handled uint64
		want    uint64
	}{
		{"all caught", map[string]uint64{tcpfsmProgRawInetSockSetState: 128, tcpfsmProgRawNestedInetSockSetState: 0}, 128, 0},
		{"some missed twice", map[string]uint64{tcpfsmProgRawInetSockSetState: 130, tcpfsmProgRawNestedInetSockSetState: 2}, 128, 2},
		{"nested busy alone", map[string]uint64{tcpfsmProgRawInetSockSetState: 0, tcpfsmProgRawNestedInetSockSetState: 3}, 0, 0},
		{"resets", map[string]uint64{tcpfsmProgRawInetSockSetState: 5, tcpfsmProgRawTcpSendReset: 4, tcpfsmProgRawTcpReceiveReset: 1}, 5, 5},
		{"tracepoint mode", map[string]uint64{tcpfsmProgTpInetSockSetState: 7}, 0, 7},
		// Handled is read before the misses, so it cannot exceed them; if
		// it ever did, nothing is made up.
		{"never negative", map[string]uint64{tcpfsmProgRawInetSockSetState: 3}, 4, 0},
	} {
		if got := uncaught(tc.misses, tc.handled); got != tc.want {
			t.Errorf("%s: uncaught %d, want %d", tc.name, got, tc.want)
		}
	}
}

// A reading taken between a miss and its nested run is one too high: a
// rise is read again and the lowest kept; the count never goes down.
func TestConfirmRise(t *testing.T) {
	seq := func(vs ...uint64) (func() (uint64, error), *int) {
		n := 0
		return func() (uint64, error) { v := vs[min(n, len(vs)-1)]; n++; return v, nil }, &n
	}
	pauses := 0
	pause := func() { pauses++ }
	for _, tc := range []struct {
		name      string
		prev      uint64
		live      bool
		readings  []uint64
		want      uint64
		wantReads int
	}{
		{"steady", 2, true, []uint64{2}, 2, 1},
		{"transient rise", 2, true, []uint64{3, 2, 3}, 2, 2}, // back at 2: confirmed
		{"real loss", 2, true, []uint64{5, 5, 5}, 5, 3},
		{"loss growing", 2, true, []uint64{5, 6, 7}, 5, 3},
		{"below the last report", 4, true, []uint64{3}, 4, 1},
		{"detached: exact", 2, false, []uint64{3, 2}, 3, 1},
	} {
		read, n := seq(tc.readings...)
		pauses = 0
		got, err := confirmRise(tc.prev, tc.live, read, pause)
		if err != nil || got != tc.want || *n != tc.wantReads || pauses != tc.wantReads-1 {
			t.Errorf("%s: %d, %v after %d readings, %d pauses; want %d after %d", tc.name, got, err, *n, pauses, tc.want, tc.wantReads)
		}
	}
	failing := func() (uint64, error) { return 0, errors.New("stats") }
	if got, err := confirmRise(7, true, failing, pause); err == nil || got != 7 {
		t.Errorf("failed reading: %d, %v; want the last report and the error", got, err)
	}
}
