// Package bench holds tcpfsm's benchmarks: the Go ingest path and the
// memory per tracked connection here, the kernel and end-to-end figures in
// the runner (bench/runner) with its load generator (bench/churn). `make
// bench` runs them all; BENCHMARKS.md has the latest results.
package bench

import (
	"errors"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/tcpfsm/tcpfsm/exporter/logs"
	"github.com/tcpfsm/tcpfsm/exporter/logsink"
	"github.com/tcpfsm/tcpfsm/exporter/metrics"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

// What a loopback connection closed with a RST (SO_LINGER 0) produces, in
// the order the kernel emits it: the client's connect (held back until its
// port is known), the server's accepted child, both ESTABLISHED, the
// client's CLOSE and RST, the server's RST and CLOSE.
func churnEvents(conns int) [][]byte {
	const (
		client, server = 40000, 8080
		step           = 20_000 // ns between events: 50k connections/s
	)
	out := make([][]byte, 0, conns*8)
	ts := uint64(1_000_000_000)
	put := func(e probe.Event) {
		ts += step
		if e.TsNs == 0 {
			e.TsNs = ts
		}
		out = append(out, append([]byte(nil), e.Bytes()...))
	}
	for i := 0; i < conns; i++ {
		cid, sid := uint64(2*i+2)<<12, uint64(2*i+3)<<12
		cport := uint16(32768 + i%28000)
		base := probe.Event{Family: probe.AFInet, Netns: 4026531840, Pid: 1234, Tid: 1234, CgroupId: 1}
		copy(base.Saddr[:], []byte{127, 0, 0, 1})
		copy(base.Daddr[:], []byte{127, 0, 0, 1})
		copy(base.Comm[:], "churn")
		c := base
		c.ConnId, c.Sport, c.Dport = cid, cport, server
		s := base
		s.ConnId, s.Sport, s.Dport = sid, server, cport
		_ = client

		e := c // connect(): held until the SYN went out
		e.Type, e.Oldstate, e.Newstate = uint8(probe.TypeState), uint8(probe.StateClose), uint8(probe.StateSynSent)
		e.Owner, e.Flags, e.TsNs = uint8(probe.OwnerTask), probe.FlagDeferred, ts+1
		put(e)
		e = s
		e.Type, e.Oldstate, e.Newstate = uint8(probe.TypeState), uint8(probe.StateListen), uint8(probe.StateSynRecv)
		e.Owner = uint8(probe.OwnerListener)
		put(e)
		e = s
		e.Type, e.Oldstate, e.Newstate = uint8(probe.TypeState), uint8(probe.StateSynRecv), uint8(probe.StateEstablished)
		e.Owner, e.DeltaNs, e.SrttUs, e.SegsIn, e.SegsOut = uint8(probe.OwnerListener), step, 20, 2, 1
		put(e)
		e = c
		e.Type, e.Oldstate, e.Newstate = uint8(probe.TypeState), uint8(probe.StateSynSent), uint8(probe.StateEstablished)
		e.Owner, e.DeltaNs, e.SrttUs, e.BytesAcked, e.SegsIn, e.SegsOut = uint8(probe.OwnerCarried), 3*step, 40, 1, 1, 2
		e.Flags = probe.FlagSynAcked
		put(e)
		e = c
		e.Type, e.Oldstate, e.Newstate = uint8(probe.TypeState), uint8(probe.StateEstablished), uint8(probe.StateClose)
		e.Owner, e.DeltaNs, e.SrttUs, e.BytesAcked, e.SegsIn, e.SegsOut = uint8(probe.OwnerCarried), step, 40, 1, 1, 2
		e.Flags = probe.FlagSynAcked
		put(e)
		e = c
		e.Type, e.Oldstate, e.Newstate = uint8(probe.TypeResetSent), uint8(probe.StateClose), uint8(probe.StateClose)
		e.Owner, e.SrttUs, e.BytesAcked, e.SegsIn, e.SegsOut = uint8(probe.OwnerCarried), 40, 1, 1, 3
		put(e)
		e = s
		e.Type, e.Oldstate, e.Newstate = uint8(probe.TypeResetReceived), uint8(probe.StateEstablished), uint8(probe.StateEstablished)
		e.Owner, e.SrttUs, e.SegsIn, e.SegsOut = uint8(probe.OwnerListener), 20, 3, 1
		put(e)
		e = s
		e.Type, e.Oldstate, e.Newstate = uint8(probe.TypeState), uint8(probe.StateEstablished), uint8(probe.StateClose)
		e.Owner, e.DeltaNs, e.SrttUs, e.SegsIn, e.SegsOut = uint8(probe.OwnerListener), 4*step, 20, 3, 1
		e.SkErr = uint16(syscall.ECONNRESET)
		put(e)
	}
	return out
}

// recordedEvents reads the events of a recording (TCPFSM_BENCH_RECORDING,
// made by `make bench` from a real churn), or returns nil.
func recordedEvents(tb testing.TB) [][]byte {
	path := os.Getenv("TCPFSM_BENCH_RECORDING")
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	rd, err := recording.NewReader(f, probe.EventSize)
	if err != nil {
		tb.Fatal(err)
	}
	var out [][]byte
	for {
		kind, p, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			tb.Fatal(err)
		}
		if kind == recording.KindEvent {
			out = append(out, append([]byte(nil), p...))
		}
	}
	if len(out) == 0 {
		tb.Fatalf("%s: no events", path)
	}
	return out
}

// discard is a log file that takes everything at once.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
func (discard) Close() error                { return nil }

// pipeline is what `tcpfsm agent` does with each event, without the ring
// buffer: decode, count in the metrics, feed the lifecycle builder, whose
// records go to the metrics (and, with logs, to JSON lines).
type pipeline struct {
	b    *lifecycle.Builder
	m    *metrics.Metrics
	lw   *logs.Writer
	sink *logsink.Sink
	ev   probe.Event
	off  uint64 // added to timestamps: each pass over the events is later
	fed  int    // events fed so far
	tick uint64
}

func newPipeline(withLogs bool) *pipeline {
	p := &pipeline{}
	p.m = metrics.New(metrics.Options{}, metrics.BuildInfo{}, func() metrics.Snapshot { return metrics.Snapshot{} })
	h := lifecycle.Handlers{p.m}
	if withLogs {
		// As the agent: lines queued to the sink, written by its goroutine.
		// A queue larger than the default: the bench feeds events several
		// times faster than a live ring buffer does, and on a loaded machine
		// the writer goroutine may wait for a CPU longer than 4 MiB last.
		p.sink = logsink.New(discard{}, logsink.Options{QueueBytes: 32 << 20})
		p.lw = logs.New(p.sink, clock.Clock{BootNs: 1_700_000_000e9}, logs.Options{})
		h = append(h, p.lw)
	}
	p.b = lifecycle.NewBuilder(lifecycle.Config{}, h)
	return p
}

func (p *pipeline) event(raw []byte) error {
	if err := probe.Decode(raw, &p.ev); err != nil {
		return err
	}
	p.ev.TsNs += p.off
	p.m.Event(&p.ev)
	if p.lw != nil {
		p.lw.Event(&p.ev)
	}
	p.b.Event(&p.ev)
	return nil
}

// run feeds n events, cycling over evs, with a clock tick every 50 ms of
// event time as the live reader gives.
func (p *pipeline) run(evs [][]byte, n int) error {
	span := probe.Event{}
	if err := probe.Decode(evs[len(evs)-1], &span); err != nil {
		return err
	}
	first := probe.Event{}
	if err := probe.Decode(evs[0], &first); err != nil {
		return err
	}
	period := span.TsNs - first.TsNs + 1_000_000
	for i := 0; i < n; i++ {
		j := p.fed % len(evs)
		if j == 0 && p.fed > 0 {
			p.off += period
		}
		p.fed++
		if err := p.event(evs[j]); err != nil {
			return err
		}
		if p.ev.TsNs > p.tick+50_000_000 {
			p.tick = p.ev.TsNs
			p.b.Tick(p.tick)
			if p.lw != nil {
				p.lw.Flush() // the agent flushes each time the ring buffer is empty
			}
		}
	}
	return nil
}

func benchIngest(b *testing.B, withLogs bool) {
	evs := recordedEvents(b)
	synthetic := evs == nil
	if synthetic {
		evs = churnEvents(20000)
	}
	p := newPipeline(withLogs)
	// Warm up: maps and slabs at their steady-state size.
	if err := p.run(evs, len(evs)); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	if err := p.run(evs, b.N); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if p.sink != nil {
		// Every line written: a bench that dropped lines would flatter.
		p.sink.Close(time.Second)
		if st := p.sink.Stats(); st.DroppedQueueFull+st.DroppedWriteError != 0 {
			b.Fatalf("the log sink dropped lines: %+v", st)
		}
	}
	if !synthetic {
		return // a recording's edges (connections cut by its start and end) are anomalies
	}
	if st := p.b.Stats(); st.Unmatched != 0 || st.Anomalies != [lifecycle.AnomalyKinds]uint64{} {
		b.Fatalf("events made anomalies: %+v", st)
	}
	if p.b.Tracked() > 10000 {
		b.Fatalf("%d records still tracked: the events do not close their connections", p.b.Tracked())
	}
}

// BenchmarkIngest: decode, metrics, lifecycle; one op is one event.
func BenchmarkIngest(b *testing.B) { benchIngest(b, false) }

// BenchmarkIngestWithLogs: the same, and every record logged as a JSON
// line (to io.Discard), as the agent does by default.
func BenchmarkIngestWithLogs(b *testing.B) { benchIngest(b, true) }

// TestIngestDoesNotAllocate holds the steady-state target: no allocation
// per event (amortized over many connections).
func TestIngestDoesNotAllocate(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	evs := churnEvents(2000)
	p := newPipeline(false)
	if err := p.run(evs, 4*len(evs)); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(5, func() {
		if err := p.run(evs, len(evs)); err != nil {
			t.Fatal(err)
		}
	})
	perEvent := allocs / float64(len(evs))
	t.Logf("%.4f allocations per event (%.0f per pass of %d events)", perEvent, allocs, len(evs))
	// Exemplars allocate once a second per histogram; nothing else may.
	if perEvent > 0.001 {
		t.Errorf("%.4f allocations per event, want none in steady state", perEvent)
	}
}

// openEvents starts n connections and leaves them ESTABLISHED: half
// connect()ed, half accepted, as loopback traffic has them.
func openEvents(n int) []probe.Event {
	out := make([]probe.Event, 0, 2*n)
	ts := uint64(1_000_000_000)
	for i := 0; i < n; i++ {
		e := probe.Event{Family: probe.AFInet, Netns: 4026531840, Pid: 1234, Tid: 1234, CgroupId: 1,
			ConnId: uint64(i+1) << 12, Type: uint8(probe.TypeState), Owner: uint8(probe.OwnerTask)}
		copy(e.Saddr[:], []byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		copy(e.Daddr[:], []byte{10, 0, 0, 1})
		copy(e.Comm[:], "server")
		first, second := probe.StateSynSent, probe.StateClose
		e.Sport, e.Dport = uint16(i), 443
		if i%2 == 1 {
			first, second = probe.StateSynRecv, probe.StateListen
			e.Sport, e.Dport = 443, uint16(i)
		}
		ts += 1000
		e.TsNs, e.Oldstate, e.Newstate = ts, uint8(second), uint8(first)
		out = append(out, e)
		ts += 1000
		e.TsNs, e.Oldstate, e.Newstate = ts, uint8(first), uint8(probe.StateEstablished)
		out = append(out, e)
	}
	return out
}

func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// trackedBytes is the Go heap per open connection the builder holds, with
// n of them tracked.
func trackedBytes(tb testing.TB, n int) float64 {
	profile := os.Getenv("TCPFSM_BENCH_HEAPPROFILE")
	if profile != "" {
		// Every allocation sampled: the maps grow in many small tables
		// that the default rate (one sample per 512 KiB) mostly misses.
		runtime.MemProfileRate = 1
	}
	evs := openEvents(n)
	before := heapInUse()
	p := newPipeline(false)
	for i := range evs {
		p.m.Event(&evs[i])
		p.b.Event(&evs[i])
	}
	after := heapInUse()
	// Where the bytes go: a heap profile while they are all open
	// (bench/heap.sh reads it, inuse_space).
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			tb.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(f); err != nil {
			tb.Fatal(err)
		}
		if err := f.Close(); err != nil {
			tb.Fatal(err)
		}
	}
	if p.b.Tracked() != n {
		tb.Fatalf("tracked %d, want %d", p.b.Tracked(), n)
	}
	runtime.KeepAlive(p)
	runtime.KeepAlive(evs)
	return float64(after-before) / float64(n)
}

// BenchmarkTrackedMemory reports the Go heap per tracked connection with
// 100k connections open (the events themselves not counted).
func BenchmarkTrackedMemory(b *testing.B) {
	var per float64
	for i := 0; i < b.N; i++ {
		per = trackedBytes(b, 100_000)
	}
	b.ReportMetric(per, "B/conn")
	b.ReportMetric(float64(unsafe.Sizeof(lifecycle.Record{})), "B/Record")
}
