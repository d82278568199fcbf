package session

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"syscall"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/record"
)

// ingest applies inputs to a builder. Live sessions and replays share it,
// which is what makes a replay give the live run's records.
type ingest struct {
	b       *lifecycle.Builder
	onEvent func(*probe.Event)
	ev      probe.Event
	sock    lifecycle.Socket
	lost    probe.LostCounts
	feats   uint64
}

// nopHandler drops records, for sessions that only want events.
type nopHandler struct{}

func (nopHandler) Closed(*lifecycle.Record)   {}
func (nopHandler) Finished(*lifecycle.Record) {}

func newIngest(h lifecycle.Handler, cfg lifecycle.Config, onEvent func(*probe.Event)) *ingest {
	if h == nil {
		h = nopHandler{}
	}
	return &ingest{b: lifecycle.NewBuilder(cfg, h), onEvent: onEvent}
}

func (in *ingest) knowsCgroup(id uint64) bool { return in.b.KnowsCgroup(id) }

// apply decodes one input and hands it to the builder.
func (in *ingest) apply(kind record.Kind, p []byte) error {
	switch kind {
	case record.KindEvent:
		if err := probe.Decode(p, &in.ev); err != nil {
			return err
		}
		if in.onEvent != nil {
			in.onEvent(&in.ev)
		}
		in.b.Event(&in.ev)
	case record.KindTick:
		in.b.Tick(record.U64(p))
	case record.KindLost:
		in.lost.RingFull, in.lost.Recursion = record.Lost(p)
		in.b.Lost(in.lost.Total())
	case record.KindSocket:
		if err := lifecycle.DecodeSocket(p, &in.sock); err != nil {
			return err
		}
		in.b.Observe(&in.sock)
	case record.KindDumpDone:
		ns, purpose, t, err := lifecycle.DecodeDumpDone(p)
		if err != nil {
			return err
		}
		in.b.DumpDone(ns, purpose, t)
	case record.KindCgroup:
		id, path := record.Cgroup(p)
		in.b.Cgroup(id, path)
	case record.KindFeatures:
		in.feats = record.U64(p)
		in.b.SetExactTimeWait(in.feats&featTimeWait != 0)
	default:
		return fmt.Errorf("unknown input %s", kind)
	}
	return nil
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return b[:]
}

func putU64(b []byte, v uint64) { binary.LittleEndian.PutUint64(b, v) }

func statIno(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
