// Package connview reads what is open now out of a lifecycle builder, into
// the view that the agent's connections API, tcpfsm top and the stuck
// connection gauges show: every open connection with its owner, its state
// and how long it has been in it, selected, ordered and bounded by a Query.
//
// The builder is shared with the event path, which must never wait long
// for a reader. So the work is split in two: the methods documented "call
// with the builder locked" (Selection.Select, One.SelectOne, Stuck.Count,
// Counts.Read) make one pass over the open records and copy out only what
// the answer needs (for a selection, at most Query.Limit records, kept in
// a bounded heap while the pass runs); everything else (strings, order,
// JSON) is done after the lock is let go. Data flows one way: the view
// never changes the builder.
//
// What tcpfsm cannot know stays unknown: a connection older than the
// tracer entered its state at an unknown time, so its time in state is
// null and only a lower bound (since it was first seen) orders it, selects
// it by age and counts it as stuck.
package connview
