package session

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/cgroups"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

// handedOut is what a handler was given: which call, the record, and the
// names attached.
type handedOut struct {
	closed     bool
	id         uint64
	meta, peer string
}

func (h handedOut) String() string {
	call := "finished"
	if h.closed {
		call = "closed"
	}
	return fmt.Sprintf("%s %d meta=%q peer=%q", call, h.id, h.meta, h.peer)
}

type handOutLog []handedOut

func metaName(m *metadata.Meta) string {
	if m == nil {
		return ""
	}
	if m.InPod() {
		return m.Pod.Namespace + "/" + m.Pod.Name + "/" + m.Name
	}
	return m.Name
}

func (l *handOutLog) Closed(r *lifecycle.Record) {
	*l = append(*l, handedOut{true, r.ID, metaName(r.Meta), metaName(r.Peer)})
}
func (l *handOutLog) Finished(r *lifecycle.Record) {
	*l = append(*l, handedOut{false, r.ID, metaName(r.Meta), metaName(r.Peer)})
}

func (l *handOutLog) take() []handedOut {
	out := *l
	*l = nil
	return out
}

const ms = uint64(time.Millisecond)

func ctrKey(id string) metadata.Key {
	return metadata.Key{Runtime: cgroups.RuntimeContainerd, ID: strings.Repeat(id, 64/len(id))}
}

func podMeta(k metadata.Key, ns, pod, name string) metadata.Meta {
	return metadata.Meta{Runtime: k.Runtime, ID: k.ID, Name: name,
		Pod: metadata.Pod{Namespace: ns, Name: pod, Workload: metadata.Workload{Kind: "Pod", Name: pod, Source: "pod"}}}
}

// loopRecord is an established loopback connection's end.
func loopRecord(id, cgroup uint64, lport, rport uint16) lifecycle.Record {
	r := lifecycle.Record{ID: id, Role: lifecycle.RoleActive, Family: probe.AFInet, Lport: lport, Rport: rport,
		NetNS: 7, CgroupID: cgroup, Owner: probe.OwnerTask, NSpan: 1}
	copy(r.Laddr[:], []byte{127, 0, 0, 1})
	copy(r.Raddr[:], []byte{127, 0, 0, 1})
	r.Spans[0] = lifecycle.Span{State: probe.StateEstablished, Enter: 1}
	if cgroup == 0 {
		r.Owner = probe.OwnerUnknown
	}
	return r
}

type stageTest struct {
	t     *testing.T
	s     *metaStage
	out   *handOutLog
	asked []string
}

func newStageTest(t *testing.T, peers bool) *stageTest {
	st := &stageTest{t: t, out: &handOutLog{}}
	st.s = newMetaStage(st.out)
	st.s.ask = func(k metadata.Key, first bool) { st.asked = append(st.asked, fmt.Sprintf("%s %v", k.ID[:4], first)) }
	st.s.input(&recording.Meta{Op: recording.MetaEnabled, Wait: time.Second, Peers: peers})
	st.s.tick(1000 * ms)
	return st
}

func (st *stageTest) answer(k metadata.Key, m *metadata.Meta) {
	in := recording.Meta{Op: recording.MetaContainer, Meta: metadata.Meta{Runtime: k.Runtime, ID: k.ID}}
	if m != nil {
		in.Known, in.Meta = true, *m
	}
	st.s.input(&in)
}

func (st *stageTest) want(what string, want ...handedOut) {
	st.t.Helper()
	got := st.out.take()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		st.t.Errorf("%s:\n got %v\nwant %v", what, got, want)
	}
}

// Both ends of a loopback connection between two containers wait for
// their names and for each other, go out in the order they came with
// their own and their peer's names, and records behind them keep their
// place; their Finished after TIME_WAIT carries the same.
func TestMetaStageNamesBothEnds(t *testing.T) {
	st := newStageTest(t, true)
	web, db := ctrKey("ab"), ctrKey("cd")
	st.s.cgroup(11, web)
	st.s.cgroup(12, db)
	if want := []string{"abab true", "cdcd true"}; !reflect.DeepEqual(st.asked, want) {
		t.Errorf("asked %v, want %v: each container once, when its cgroup is first seen", st.asked, want)
	}

	client := loopRecord(1, 11, 40000, 8080)
	client.TimeWait = lifecycle.TWPending // its Finished comes later
	server := loopRecord(2, 12, 8080, 40000)
	host := loopRecord(3, 0, 5000, 6000)
	host.Raddr = [16]byte{10, 0, 0, 9} // not node-local: waits for nothing
	for _, r := range []*lifecycle.Record{&client, &server, &host} {
		r.End = 2 // closed: Closed, then Finished
	}

	st.s.Closed(&client)
	st.s.Closed(&host)
	st.s.Finished(&host)
	st.want("the client waits, the host record behind it")

	st.answer(web, &metadata.Meta{Runtime: web.Runtime, ID: web.ID, Name: "nginx", Pod: metadata.Pod{Namespace: "shop", Name: "web-1"}})
	st.want("named, but its peer has not come")

	st.s.Closed(&server)
	st.s.Finished(&server)
	st.want("the server's container is not named yet")

	dbMeta := podMeta(db, "data", "db-0", "postgres")
	st.answer(db, &dbMeta)
	st.want("all named",
		handedOut{true, 1, "shop/web-1/nginx", "data/db-0/postgres"},
		handedOut{true, 3, "", ""},
		handedOut{false, 3, "", ""},
		handedOut{true, 2, "data/db-0/postgres", "shop/web-1/nginx"},
		handedOut{false, 2, "data/db-0/postgres", "shop/web-1/nginx"},
	)

	st.s.tick(61_000 * ms)
	st.s.Finished(&client) // the builder's own copy: nothing attached to it
	st.want("after TIME_WAIT", handedOut{false, 1, "shop/web-1/nginx", "data/db-0/postgres"})

	if got := st.s.statsNow(); got.Delayed != 2 || got.Resolved != 2 || got.TimedOut != 0 || got.Dropped != 0 {
		t.Errorf("stats %+v: want 2 delayed, 2 resolved", got)
	}
	if len(st.s.closed) != 0 || len(st.s.peerWait) != 0 || len(st.s.ends) != 0 {
		t.Errorf("left behind: %d closed, %d peer waits, %d ends", len(st.s.closed), len(st.s.peerWait), len(st.s.ends))
	}
}

// A record whose container is never answered goes out at the wait's end
// in input time, unnamed and counted; later records of that container do
// not wait, and ask again at most every metaRetry, so the name comes back.
func TestMetaStageTimeoutAndRetry(t *testing.T) {
	st := newStageTest(t, true)
	k := ctrKey("ef")
	st.s.cgroup(21, k)
	r := loopRecord(1, 21, 40000, 9) // its peer never comes either
	st.s.Closed(&r)
	st.s.Finished(&r)
	st.s.tick(1999 * ms)
	st.want("within the wait")
	st.s.tick(2000 * ms)
	st.want("at the wait's end", handedOut{true, 1, "", ""}, handedOut{false, 1, "", ""})

	st.answer(k, nil) // the runtime does not know it
	st.asked = nil
	r2 := loopRecord(2, 21, 40001, 9)
	r2.Spans[0].State = probe.StateSynSent // never established: no peer to wait for
	st.s.Closed(&r2)
	st.s.Finished(&r2)
	st.want("an unnamed container's records go at once", handedOut{true, 2, "", ""}, handedOut{false, 2, "", ""})
	if len(st.asked) != 0 {
		t.Errorf("asked again %v before metaRetry", st.asked)
	}
	st.s.tick(2000*ms + metaRetry)
	r3 := loopRecord(3, 21, 40002, 9)
	r3.NSpan = 0
	st.s.Finished(&r3)
	if want := []string{"efef false"}; !reflect.DeepEqual(st.asked, want) {
		t.Errorf("asked %v, want %v", st.asked, want)
	}
	m := podMeta(k, "ops", "late-0", "late")
	st.answer(k, &m)
	r4 := loopRecord(4, 21, 40003, 9)
	r4.NSpan = 0
	st.s.Finished(&r4)
	st.want("named once the runtime answers", handedOut{false, 3, "", ""}, handedOut{false, 4, "ops/late-0/late", ""})
	if got := st.s.statsNow(); got.Delayed != 1 || got.TimedOut != 1 {
		t.Errorf("stats %+v: want 1 delayed, timed out", got)
	}
}

// Without Peers (a port or owner filter may hide the other end), records
// do not wait for their peer, but still name it when it went first; a
// peer in its own network namespace is named by its sandbox IP.
func TestMetaStagePeersWithoutWaiting(t *testing.T) {
	st := newStageTest(t, false)
	a, b := ctrKey("12"), ctrKey("34")
	st.s.cgroup(1, a)
	st.s.cgroup(2, b)
	ma, mb := podMeta(a, "n1", "a-0", "a"), podMeta(b, "n2", "b-0", "b")
	st.answer(a, &ma)
	st.answer(b, &mb)
	first := loopRecord(1, 1, 1111, 2222)
	second := loopRecord(2, 2, 2222, 1111)
	st.s.Finished(&first)
	st.s.Finished(&second)
	st.want("no wait", handedOut{false, 1, "n1/a-0/a", ""}, handedOut{false, 2, "n2/b-0/b", "n1/a-0/a"})

	sb := metadata.Meta{Runtime: a.Runtime, ID: "sandbox", Sandbox: true,
		Pod: metadata.Pod{Namespace: "n3", Name: "c-0", IP: netip.MustParseAddr("10.1.0.7")}}
	st.s.input(&recording.Meta{Op: recording.MetaPodIP, Meta: sb})
	out := loopRecord(3, 1, 3333, 80)
	out.Raddr = [16]byte{10, 1, 0, 7}
	st.s.Finished(&out)
	st.want("by sandbox IP", handedOut{false, 3, "n1/a-0/a", "n3/c-0/"})
	st.s.input(&recording.Meta{Op: recording.MetaPodIPGone, Meta: metadata.Meta{Pod: metadata.Pod{IP: sb.Pod.IP}}})
	out.ID = 4
	st.s.Finished(&out)
	st.want("IP gone", handedOut{false, 4, "n1/a-0/a", ""})
}

// Without MetaEnabled the stage hands records on untouched, and asks
// nothing: every recording made before metadata replays as it did.
func TestMetaStageOff(t *testing.T) {
	out := &handOutLog{}
	s := newMetaStage(out)
	asked := 0
	s.ask = func(metadata.Key, bool) { asked++ }
	s.cgroup(1, ctrKey("ab"))
	r := loopRecord(1, 1, 1, 2)
	s.Closed(&r)
	s.Finished(&r)
	if got := out.take(); len(got) != 2 || asked != 0 || len(s.closed) != 0 {
		t.Errorf("off: %v, %d asks, %d closed kept", got, asked, len(s.closed))
	}
}

// More records waiting than maxDelayed: the oldest goes out early,
// counted, the order kept.
func TestMetaStageQueueBound(t *testing.T) {
	st := newStageTest(t, false)
	k := ctrKey("99")
	st.s.cgroup(5, k)
	for i := range maxDelayed + 3 {
		r := loopRecord(uint64(i+1), 5, 1, 2)
		r.NSpan = 0
		st.s.Finished(&r)
	}
	got := st.out.take()
	if len(got) != 3 || got[0].id != 1 || got[2].id != 3 {
		t.Fatalf("handed out early: %v, want records 1 to 3", got)
	}
	if s := st.s.statsNow(); s.Dropped != 3 || s.Delayed != maxDelayed+3 {
		t.Errorf("stats %+v", s)
	}
	st.s.end()
	if got := st.out.take(); len(got) != maxDelayed || got[0].id != 4 {
		t.Errorf("end: %d records from %v, want %d from 4", len(got), got[:1], maxDelayed)
	}
}

// loopbackChurn feeds n connections' events, both ends on loopback and
// owned by cgroup 5, reset after their handshake, with a tick every 50.
type loopbackChurn struct {
	t      testing.TB
	in     *ingest
	x      recording.Input
	id, ts uint64
}

func (c *loopbackChurn) ev(conn uint64, sport, dport uint16, from, to probe.State, err syscall.Errno) {
	lo := [16]byte{127, 0, 0, 1}
	c.ts += 10_000
	c.x = recording.Input{Kind: recording.KindEvent, Event: probe.Event{ConnId: conn, Family: probe.AFInet,
		Type: uint8(probe.TypeState), Netns: 1, Sport: sport, Dport: dport, Saddr: lo, Daddr: lo,
		Owner: uint8(probe.OwnerTask), Pid: 42, CgroupId: 5, TsNs: c.ts, Oldstate: uint8(from), Newstate: uint8(to), SkErr: uint16(err)}}
	if e := c.in.apply(&c.x); e != nil {
		c.t.Fatal(e)
	}
}

func (c *loopbackChurn) run(n int) {
	for i := 0; i < n; i++ {
		c.id += 2
		cl, sv := (c.id<<12)|1, ((c.id+1)<<12)|1
		port := uint16(30000 + i%30000)
		c.ev(cl, port, 8080, probe.StateClose, probe.StateSynSent, 0)
		c.ev(sv, 8080, port, probe.StateListen, probe.StateSynRecv, 0)
		c.ev(cl, port, 8080, probe.StateSynSent, probe.StateEstablished, 0)
		c.ev(sv, 8080, port, probe.StateSynRecv, probe.StateEstablished, 0)
		c.ev(cl, port, 8080, probe.StateEstablished, probe.StateClose, syscall.ECONNRESET)
		c.ev(sv, 8080, port, probe.StateEstablished, probe.StateClose, syscall.ECONNRESET)
		if i%50 == 49 {
			c.x = recording.Input{Kind: recording.KindTick, Tick: c.ts}
			if err := c.in.apply(&c.x); err != nil {
				c.t.Fatal(err)
			}
		}
	}
}

// newChurn is an ingest with metadata on (the container of cgroup 5
// named) or off.
func newChurn(t testing.TB, h lifecycle.Handler, meta bool) *loopbackChurn {
	in := newIngest(h, lifecycle.Config{}, func(*probe.Event) {})
	k := ctrKey("ab")
	m := podMeta(k, "shop", "web-1", "web")
	inputs := []recording.Input{{Kind: recording.KindCgroup, Cgroup: recording.Cgroup{ID: 5, Path: "/kubepods/podu-1/" + k.ID}}}
	if meta {
		inputs = []recording.Input{
			{Kind: recording.KindMeta, Meta: recording.Meta{Op: recording.MetaEnabled, Wait: time.Second, Peers: true}},
			inputs[0],
			{Kind: recording.KindMeta, Meta: recording.Meta{Op: recording.MetaContainer, Known: true, Meta: m}},
		}
	}
	for _, x := range inputs {
		if err := in.apply(&x); err != nil {
			t.Fatal(err)
		}
	}
	return &loopbackChurn{t: t, in: in, ts: 1_000_000_000}
}

// With metadata on, records of named containers and their node-local
// peers (both ends of loopback connections, reset after their handshake)
// go through the stage without an allocation per event.
func TestApplyWithMetadataDoesNotAllocate(t *testing.T) {
	var h countClosed
	c := newChurn(t, &h, true)
	pass := func() { c.run(500) }
	pass()
	pass()
	allocs := testing.AllocsPerRun(5, pass)
	st := c.in.meta.statsNow()
	t.Logf("%.1f allocations per pass, %d closed, stage %+v", allocs, h.n, st)
	if h.n < 6000 {
		t.Fatalf("%d connections closed, want every one of the passes'", h.n)
	}
	if st.Delayed == 0 || st.TimedOut != 0 || c.in.meta.qlen() != 0 {
		t.Errorf("stage %+v, queue %d: want ends that waited for each other, none timed out", st, c.in.meta.qlen())
	}
	if perEvent := allocs / 3000; perEvent > 0.001 {
		t.Errorf("%.4f allocations per event (%.0f per pass of 3000), want none", perEvent, allocs)
	}
}

// BenchmarkApplyLoopback and BenchmarkApplyLoopbackMetadata: one op is
// one event of loopback churn (6 per connection), without and with the
// metadata stage naming both ends and their peers: its cost per event.
func BenchmarkApplyLoopback(b *testing.B)         { benchChurn(b, false) }
func BenchmarkApplyLoopbackMetadata(b *testing.B) { benchChurn(b, true) }

func benchChurn(b *testing.B, meta bool) {
	var h countClosed
	c := newChurn(b, &h, meta)
	c.run(20000) // warm up: tables at their steady size
	b.ReportAllocs()
	b.ResetTimer()
	c.run(b.N/6 + 1)
}
