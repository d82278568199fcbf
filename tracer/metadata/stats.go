package metadata

import "time"

// Stats are the resolver's self-metrics, plain numbers for the exporter
// to turn into tcpfsm_metadata_* series (this package has no Prometheus
// dependency). Counters only grow.
type Stats struct {
	Entries int // gauge: cached containers and negative entries

	Lookups, Hits, Misses uint64
	// Evictions: entries dropped because the cache was full; Expirations:
	// entries dropped TTL after their container was gone.
	Evictions, Expirations uint64

	// Waits: answered with metadata; timed out (nothing learnt within the
	// caller's limit); unknown (the runtime does not know the id, no
	// source serves its runtime, or Close); dropped (MaxWaiters reached).
	WaitsResolved, WaitsTimedOut, WaitsUnknown, WaitsDropped uint64
	WaitsPending                                             int // gauge

	Sources []SourceStats
}

// SourceStats describe one runtime's source.
type SourceStats struct {
	Runtime, Endpoint string
	Up                bool      // the last list succeeded
	Lists             uint64    // successful lists
	LastList          time.Time // of the last successful one
	// Errors counts failed lists by reason
	// (tcpfsm_metadata_errors_total{reason} sums the sources).
	Errors [NumReasons]uint64
}

// ErrorsTotal sums the sources' errors by reason.
func (s *Stats) ErrorsTotal() [NumReasons]uint64 {
	var t [NumReasons]uint64
	for _, src := range s.Sources {
		for i, n := range src.Errors {
			t[i] += n
		}
	}
	return t
}

// Stats returns the counters now.
func (r *Resolver) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := Stats{
		Entries: r.cache.len(), Lookups: r.st.lookups, Hits: r.st.hits, Misses: r.st.misses,
		Evictions: r.cache.evictions, Expirations: r.cache.expirations,
		WaitsResolved: r.st.waitsResolved, WaitsTimedOut: r.st.waitsTimedOut,
		WaitsUnknown: r.st.waitsUnknown, WaitsDropped: r.st.waitsDropped, WaitsPending: r.nwait,
	}
	for _, s := range r.sources {
		ss := s.stats
		ss.Runtime = s.Runtime()
		ss.Up = s.up
		st.Sources = append(st.Sources, ss)
	}
	return st
}
