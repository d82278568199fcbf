package session

import (
	"errors"
	"fmt"
	"io"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

// ReplayOptions configure Replay.
type ReplayOptions struct {
	Lifecycle lifecycle.Config
	Handler   lifecycle.Handler
	OnEvent   func(*probe.Event)
	// Stop, when it returns true after an input, ends the replay early
	// (a count reached).
	Stop func() bool
	// OnEventMeta, when set, sees every event with what the recording
	// had said of its owner's container by then (nil: nothing).
	OnEventMeta func(*probe.Event, *metadata.Meta)
	// OnMetaEnabled is called when the recording says its session named
	// containers (before any record), for views that then show names.
	OnMetaEnabled func()
}

// ReplayResult summarizes a replay.
type ReplayResult struct {
	Header recording.Header
	Clock  clock.Clock
	Inputs uint64
	Lost   probe.LostCounts
	Stats  lifecycle.Stats
}

// Replay feeds a recording through the pipeline a live session runs,
// then flushes the builder. An error names the offset of the bad input;
// every input before it has been applied and its records emitted.
func Replay(rd *recording.Reader, opts ReplayOptions) (ReplayResult, error) {
	h := rd.Header()
	res := ReplayResult{Header: h, Clock: clock.Clock{BootNs: h.BootNs}}
	in := newIngest(opts.Handler, opts.Lifecycle, opts.OnEvent)
	in.onEventMeta = opts.OnEventMeta
	var x recording.Input
	var err error
	for {
		off := rd.Offset()
		if err = rd.Read(&x); err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			break
		}
		if err = in.apply(&x); err != nil {
			err = fmt.Errorf("offset %d: %s record: %w", off, x.Kind, err)
			break
		}
		if x.Kind == recording.KindMeta && x.Meta.Op == recording.MetaEnabled && opts.OnMetaEnabled != nil {
			opts.OnMetaEnabled()
		}
		res.Inputs++
		if opts.Stop != nil && opts.Stop() {
			break
		}
	}
	in.b.Flush()
	in.meta.end()
	res.Lost = in.lost
	res.Stats = in.b.Stats()
	return res, err
}
