package session

import (
	"fmt"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

// ingest applies decoded inputs to a builder. Live sessions and replays
// share it, which is what makes a replay give the live run's records: a
// live input is decoded once, where it arises, a replayed one by the
// recording's reader, and both come here as the same recording.Input.
type ingest struct {
	b           *lifecycle.Builder
	meta        *metaStage // between the builder and the handler
	onEvent     func(*probe.Event)
	onEventMeta func(*probe.Event, *metadata.Meta)
	lost        probe.LostCounts
}

func newIngest(h lifecycle.Handler, cfg lifecycle.Config, onEvent func(*probe.Event)) *ingest {
	if h == nil {
		h = lifecycle.Handlers(nil) // records dropped, for sessions that only want events
	}
	m := newMetaStage(h)
	return &ingest{b: lifecycle.NewBuilder(cfg, m), meta: m, onEvent: onEvent}
}

func (in *ingest) knowsCgroup(id uint64) bool { return in.b.KnowsCgroup(id) }

// apply hands one input to the builder. It does not allocate.
func (in *ingest) apply(x *recording.Input) error {
	switch x.Kind {
	case recording.KindEvent:
		if in.onEvent != nil {
			in.onEvent(&x.Event)
		}
		if in.onEventMeta != nil {
			var m *metadata.Meta
			if x.Event.OwnerKnown() {
				m = in.meta.metaOf(x.Event.CgroupId)
			}
			in.onEventMeta(&x.Event, m)
		}
		in.b.Event(&x.Event)
	case recording.KindTick:
		in.meta.tick(x.Tick)
		in.b.Tick(x.Tick)
	case recording.KindLost:
		in.lost = x.Lost
		in.b.Lost(in.lost.Total())
	case recording.KindSocket:
		in.b.Observe(&x.Socket)
	case recording.KindDumpDone:
		if ft := x.DumpDone.FinTimeout; ft > 0 {
			in.b.FinTimeout(x.DumpDone.NetNS, ft)
		}
		in.b.DumpDone(x.DumpDone.NetNS, x.DumpDone.Purpose, x.DumpDone.Time)
	case recording.KindCgroup:
		container := ""
		if c, ok := cgroups.ParseContainer(x.Cgroup.Path); ok {
			container = c.String()
			in.meta.cgroup(x.Cgroup.ID, c)
		}
		in.b.Cgroup(x.Cgroup.ID, x.Cgroup.Path, container)
	case recording.KindFeatures:
		in.b.SetExactTimeWait(x.Features.TimeWait)
	case recording.KindMeta:
		in.meta.input(&x.Meta)
	default:
		return fmt.Errorf("unknown input %s", x.Kind)
	}
	return nil
}
