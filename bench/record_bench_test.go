package bench

import (
	"io"
	"testing"

	"github.com/tcpfsm/tcpfsm/exporter/jsonl"
	"github.com/tcpfsm/tcpfsm/exporter/logs"
	"github.com/tcpfsm/tcpfsm/exporter/metrics"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// keep copies the records the builder finishes.
type keep struct{ out []lifecycle.Record }

func (k *keep) Closed(*lifecycle.Record)     {}
func (k *keep) Finished(r *lifecycle.Record) { k.out = append(k.out, *r) }

// churnRecords are the records of n RST-churn connections (both ends),
// as the builder hands them to its handlers.
func churnRecords(tb testing.TB, n int) []lifecycle.Record {
	k := &keep{}
	b := lifecycle.NewBuilder(lifecycle.Config{}, lifecycle.Handlers{k})
	var ev probe.Event
	for _, raw := range churnEvents(n) {
		if err := probe.Decode(raw, &ev); err != nil {
			tb.Fatal(err)
		}
		b.Event(&ev)
	}
	b.Flush()
	if len(k.out) != 2*n {
		tb.Fatalf("%d records, want %d", len(k.out), 2*n)
	}
	return k.out
}

var benchClock = clock.Clock{BootNs: 1_700_000_000e9}

// BenchmarkAppendRecord: one connection record as a JSON line (life -o
// json, the agent's log objects); one op is one record.
func BenchmarkAppendRecord(b *testing.B) {
	recs := churnRecords(b, 1000)
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		buf = jsonl.AppendRecord(buf[:0], &recs[i%len(recs)], benchClock)
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkAppendEvent: one transition as a JSON line (trace -o json).
func BenchmarkAppendEvent(b *testing.B) {
	raw := churnEvents(1000)
	evs := make([]probe.Event, len(raw))
	for i := range raw {
		if err := probe.Decode(raw[i], &evs[i]); err != nil {
			b.Fatal(err)
		}
	}
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		buf = jsonl.AppendEvent(buf[:0], &evs[i%len(evs)], benchClock)
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkLogRecord: the agent's log line of a record (slog's keys and
// the record), to a writer that takes it at once.
func BenchmarkLogRecord(b *testing.B) {
	recs := churnRecords(b, 1000)
	w := logs.New(io.Discard, benchClock, logs.Options{})
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w.Finished(&recs[i%len(recs)])
	}
}

// BenchmarkMetricsRecord: what the metrics do with one record (Closed
// and Finished: the counters, the handshake, lifetime and state
// duration histograms).
func BenchmarkMetricsRecord(b *testing.B) {
	recs := churnRecords(b, 1000)
	for _, name := range []string{"exemplars", "noexemplars"} {
		b.Run(name, func(b *testing.B) {
			m := metrics.New(metrics.Options{NoExemplars: name == "noexemplars"}, metrics.BuildInfo{},
				func() metrics.Snapshot { return metrics.Snapshot{} })
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r := &recs[i%len(recs)]
				m.Closed(r)
				m.Finished(r)
			}
		})
	}
}
