package session

import (
	"fmt"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/record"
)

// ingest applies decoded inputs to a builder. Live sessions and replays
// share it, which is what makes a replay give the live run's records: a
// live input is decoded once, where it arises, a replayed one by the
// recording's reader, and both come here as the same record.Input.
type ingest struct {
	b       *lifecycle.Builder
	onEvent func(*probe.Event)
	lost    probe.LostCounts
}

func newIngest(h lifecycle.Handler, cfg lifecycle.Config, onEvent func(*probe.Event)) *ingest {
	if h == nil {
		h = lifecycle.Handlers(nil) // records dropped, for sessions that only want events
	}
	return &ingest{b: lifecycle.NewBuilder(cfg, h), onEvent: onEvent}
}

func (in *ingest) knowsCgroup(id uint64) bool { return in.b.KnowsCgroup(id) }

// apply hands one input to the builder. It does not allocate.
func (in *ingest) apply(x *record.Input) error {
	switch x.Kind {
	case record.KindEvent:
		if in.onEvent != nil {
			in.onEvent(&x.Event)
		}
		in.b.Event(&x.Event)
	case record.KindTick:
		in.b.Tick(x.Tick)
	case record.KindLost:
		in.lost = x.Lost
		in.b.Lost(in.lost.Total())
	case record.KindSocket:
		in.b.Observe(&x.Socket)
	case record.KindDumpDone:
		in.b.DumpDone(x.DumpDone.NetNS, x.DumpDone.Purpose, x.DumpDone.Time)
	case record.KindCgroup:
		container := ""
		if c, ok := cgroups.ParseContainer(x.Cgroup.Path); ok {
			container = c.String()
		}
		in.b.Cgroup(x.Cgroup.ID, x.Cgroup.Path, container)
	case record.KindFeatures:
		in.b.SetExactTimeWait(x.Features.TimeWait)
	default:
		return fmt.Errorf("unknown input %s", x.Kind)
	}
	return nil
}
