package connview

import (
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

const ms = 1_000_000

// clk maps monotonic 0 to 2026-01-01T00:00:00Z.
var clk = clock.Clock{BootNs: 1767225600_000_000_000}

// conn describes one end of a loopback connection for the tests.
type conn struct {
	id           uint64
	lport, rport uint16
	pid          uint32
	comm         string
	cgroup       uint64
}

// feeder makes events for a builder.
type feeder struct {
	t *testing.T
	b *lifecycle.Builder
}

func newFeeder(t *testing.T) *feeder {
	return &feeder{t: t, b: lifecycle.NewBuilder(lifecycle.Config{}, lifecycle.Handlers(nil))}
}

func (f *feeder) ev(c conn, tsMs uint64, old, nw probe.State, flags uint8, tx, rx uint64) {
	e := probe.Event{Type: uint8(probe.TypeState), ConnId: c.id, TsNs: tsMs * ms, Oldstate: uint8(old), Newstate: uint8(nw),
		Family: probe.AFInet, Netns: 7, Sport: c.lport, Dport: c.rport, Flags: flags,
		BytesAcked: tx, BytesReceived: rx, SrttUs: 40}
	copy(e.Saddr[:], []byte{127, 0, 0, 1})
	copy(e.Daddr[:], []byte{127, 0, 0, 1})
	if c.pid != 0 {
		e.Owner, e.Pid, e.CgroupId = uint8(probe.OwnerTask), c.pid, c.cgroup
		copy(e.Comm[:], c.comm)
	}
	f.b.Event(&e)
}

// accepted: a server end accepted at tsMs, established 1 ms later.
func (f *feeder) accepted(c conn, tsMs uint64) {
	f.ev(c, tsMs, probe.StateListen, probe.StateSynRecv, 0, 0, 0)
	f.ev(c, tsMs+1, probe.StateSynRecv, probe.StateEstablished, 0, 0, 0)
}

// connected: a client end connecting at tsMs, established 1 ms later.
func (f *feeder) connected(c conn, tsMs uint64) {
	f.ev(c, tsMs, probe.StateClose, probe.StateSynSent, 0, 0, 0)
	f.ev(c, tsMs+1, probe.StateSynSent, probe.StateEstablished, probe.FlagSynAcked, 1, 0)
}

func (f *feeder) tick(tsMs uint64) { f.b.Tick(tsMs * ms) }
