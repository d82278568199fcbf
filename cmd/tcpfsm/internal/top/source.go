// Package top is tcpfsm top: a full-screen live view of the open TCP
// connections (Bubble Tea), and the one-shot table of top --once. It
// reads a Source, either the command's own probe or a running agent's
// API, and shows what connview makes of the builder: nothing here reads
// the tracer itself.
package top

import (
	"time"

	"github.com/tcpfsm/tcpfsm/exporter/connview"
)

// Snapshot is one reading of a source.
type Snapshot struct {
	Summary connview.Summary
	// Conns are the connections the query selected, in its order, and
	// Matched how many it matched before its limit.
	Conns   []connview.Conn
	Matched int
}

// Source is where top reads from.
type Source interface {
	// Snapshot reads the summary and the connections a query selects.
	Snapshot(q *connview.Query) (Snapshot, error)
	// Detail reads one connection's record so far; found is false once it
	// is no longer tracked.
	Detail(id uint64) (d connview.Detail, found bool, err error)
	// Name says what is read, for the title: "local probe", "agent URL".
	Name() string
}

// Options start the view.
type Options struct {
	// Query is the selection the command line asked for; the keys change
	// its states, search and sort.
	Query connview.Query
	// Interval between readings (default 1 s).
	Interval time.Duration
}
