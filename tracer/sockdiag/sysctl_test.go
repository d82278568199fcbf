package sockdiag_test

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/sockdiag"
)

// A namespace's tcp_fin_timeout, read from outside it: the value set in
// that namespace, not the caller's, and its changes afterwards.
func TestSysctlInNetNS(t *testing.T) {
	requireRoot(t)
	own, err := sockdiag.OpenSysctl("", sockdiag.FinTimeoutPath)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	ownVal, err := own.Seconds()
	if err != nil {
		t.Fatal(err)
	}
	ns := nettest.NewNS(t)
	set := func(v int) {
		t.Helper()
		if err := ns.Do(func() error {
			return os.WriteFile(sockdiag.FinTimeoutPath, []byte(strconv.Itoa(v)), 0)
		}); err != nil {
			t.Fatal(err)
		}
	}
	want := int(ownVal/time.Second) + 7
	set(want)
	s, err := sockdiag.OpenSysctl(ns.Path(), sockdiag.FinTimeoutPath)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, v := range []int{want, want + 1} {
		set(v)
		got, err := s.Seconds()
		if err != nil || got != time.Duration(v)*time.Second {
			t.Errorf("namespace's tcp_fin_timeout %v %v, want %ds", got, err, v)
		}
	}
	if got, err := own.Seconds(); err != nil || got != ownVal {
		t.Errorf("own tcp_fin_timeout %v %v, want %v", got, err, ownVal)
	}
	if _, err := sockdiag.OpenSysctl("/nonexistent", sockdiag.FinTimeoutPath); err == nil {
		t.Error("opened in a namespace that does not exist")
	}
	s.Close()
	if err := s.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}
