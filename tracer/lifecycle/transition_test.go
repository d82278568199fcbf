package lifecycle

import (
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Of every transition the kernel can report, exactly three start a life.
func TestOpeningRole(t *testing.T) {
	want := map[[2]probe.State]Role{
		{probe.StateClose, probe.StateSynSent}:  RoleActive,
		{probe.StateClose, probe.StateListen}:   RoleListener,
		{probe.StateListen, probe.StateSynRecv}: RolePassive,
	}
	for from := probe.StateEstablished; from <= probe.MaxState; from++ {
		for to := probe.StateEstablished; to <= probe.MaxState; to++ {
			if got := OpeningRole(from, to); got != want[[2]probe.State{from, to}] {
				t.Errorf("%s -> %s: %s, want %s", from, to, got, want[[2]probe.State{from, to}])
			}
		}
	}
}
