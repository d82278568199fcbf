package connview

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/exporter/text"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// One connection as JSON: every field, times on the wall clock.
func TestConnJSON(t *testing.T) {
	f := scene(t)
	_, s := selectIDs(t, f.b, url.Values{"state": {"close_wait"}, "limit": {"1"}}, 1000)
	th := DefaultThresholds()
	b, err := json.Marshal(s.Conns(clk, &th)[0])
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":10,"role":"passive","family":"ipv4","laddr":"127.0.0.1","lport":80,"raddr":"127.0.0.1","rport":40001,` +
		`"netns":7,"owner":{"pid":200,"comm":"server","cgroup_id":11},"state":"CLOSE_WAIT",` +
		`"state_since":"2026-01-01T00:00:00.1Z","state_seconds":0.9,"state_seconds_at_least":0.9,` +
		`"first_seen":"2026-01-01T00:00:00.01Z","lifetime_seconds":0.99,"lifetime_seconds_at_least":0.99,` +
		`"tx_bytes":0,"rx_bytes":100,"srtt_us":40,"retransmits":0,"partial":false,"seeded":false,"anomalies":[],"stuck":false}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
}

// A connection older than the tracer: its time in state and lifetime are
// null, their lower bounds the time since it was first seen, and it is
// stuck once that passes the threshold.
func TestConnUnknownAges(t *testing.T) {
	it := item{rec: lifecycle.Record{ID: 9, Role: lifecycle.RolePassive, Family: probe.AFInet, Lport: 80, Rport: 5000,
		State: probe.StateCloseWait, Start: 1000 * ms, Seeded: true, Anomalies: lifecycle.AnomalyPartial, NSpan: 1}}
	it.rec.Spans[0] = lifecycle.Span{State: probe.StateCloseWait}
	th := DefaultThresholds()
	c := newConn(&it, 62_000*ms, clk, &th)
	if c.StateSince != nil || c.StateSeconds != nil || c.LifetimeSeconds != nil {
		t.Errorf("unknown ages given: since %v seconds %v lifetime %v", c.StateSince, c.StateSeconds, c.LifetimeSeconds)
	}
	if c.StateSecondsAtLeast != 61 || c.LifetimeSecondsAtLeast != 61 || !c.Stuck || !c.Partial || !c.Seeded || c.Owner != nil {
		t.Errorf("%+v", c)
	}
	if c.FirstSeen == nil || !c.FirstSeen.Equal(clk.Wall(1000*ms)) {
		t.Errorf("first seen %v", c.FirstSeen)
	}
	d := newDetail(&it, 62_000*ms, clk, &th)
	if len(d.States) != 1 || d.States[0].Since != nil || d.States[0].DwellSeconds != nil || !d.States[0].Current {
		t.Errorf("states %+v", d.States)
	}
	// Not past 60 s yet.
	if c := newConn(&it, 59_000*ms, clk, &th); c.Stuck {
		t.Error("stuck before its threshold")
	}
}

// A connection's record so far: every state with its entry and dwell, the
// current one so far, and its peer; the ladder drawn from the details is
// the one drawn from the builder's records.
func TestDetail(t *testing.T) {
	f := scene(t)
	var o One
	o.SelectOne(f.b, 10, 1000*ms)
	if !o.Found || !o.HasPeer {
		t.Fatalf("found %v, peer %v", o.Found, o.HasPeer)
	}
	d := o.Detail(clk, nil)
	type span struct {
		state   string
		dwell   float64
		current bool
	}
	var got []span
	for _, s := range d.States {
		if s.Since == nil || s.DwellSeconds == nil {
			t.Fatalf("state %+v: unknown", s)
		}
		got = append(got, span{s.State, *s.DwellSeconds, s.Current})
	}
	want := []span{{"SYN_RECV", 0.001, false}, {"ESTABLISHED", 0.089, false}, {"CLOSE_WAIT", 0.9, true}}
	if len(got) != len(want) {
		t.Fatalf("states %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("state %d: %v, want %v", i, got[i], want[i])
		}
	}
	if d.Peer == nil || d.Peer.ID != 11 || d.Peer.State != "FIN_WAIT2" || d.Peer.Peer != nil {
		t.Fatalf("peer %+v", d.Peer)
	}
	r, _ := f.b.Lookup(10)
	p, _ := f.b.Lookup(11)
	fromBuilder := string(text.AppendLadder(nil, r, p))
	x, y := d.Record(), d.Peer.Record()
	fromDetail := string(text.AppendLadder(nil, &x, &y))
	if fromBuilder != fromDetail || !strings.Contains(fromDetail, "CLOSE_WAIT") {
		t.Errorf("ladder from details:\n%s\nfrom the builder:\n%s", fromDetail, fromBuilder)
	}
	o.SelectOne(f.b, 40, 1000*ms)
	if o.Found {
		t.Error("a finished connection found")
	}
}

func TestStuckGroups(t *testing.T) {
	f := scene(t)
	f.b.Cgroup(11, "/system.slice/docker-0123456789ab.scope", "docker:0123456789ab")
	th := DefaultThresholds()
	th[probe.StateCloseWait] = 750 * 1_000_000
	var s Stuck
	s.Count(f.b, &th, GroupBy{}, 1000*ms)
	var cw, fw2 StuckGroup
	for _, g := range s.Groups() {
		switch {
		case g.State == probe.StateCloseWait:
			cw = g
		case g.State == probe.StateFinWait2:
			fw2 = g
		case g.Count != 0:
			t.Errorf("%+v", g)
		}
	}
	if cw.Count != 3 || cw.Stuck != 2 || cw.OldestNs != 900*ms {
		t.Errorf("close_wait %+v, want 3, 2 stuck, oldest 900 ms", cw)
	}
	// The clients' orphans, in FIN_WAIT2 since 101 ms: under its 60 s.
	if fw2.Count != 3 || fw2.Stuck != 0 || fw2.OldestNs != 899*ms {
		t.Errorf("fin_wait2 %+v, want 3, none stuck, oldest 899 ms", fw2)
	}
	s.Count(f.b, &th, GroupBy{Port: true, Comm: true, Container: true}, 1000*ms)
	var labelled []StuckGroup
	for _, g := range s.Groups() {
		if g.Count > 0 {
			labelled = append(labelled, g)
		}
	}
	if len(labelled) != 2 || labelled[0] != (StuckGroup{State: probe.StateFinWait2, Comm: "client", Count: 3, OldestNs: 899 * ms}) ||
		labelled[1] != (StuckGroup{State: probe.StateCloseWait, Port: "80", Comm: "server",
			Container: "docker:0123456789ab", Count: 3, Stuck: 2, OldestNs: 900 * ms}) {
		t.Errorf("groups %+v", labelled)
	}
	var c Counts
	c.Read(f.b, &th, 1000*ms)
	sum := c.Summary(clk, &th, Totals{Opened: 9})
	if sum.States["CLOSE_WAIT"] != 3 || sum.States["FIN_WAIT2"] != 3 || sum.States["TIME_WAIT"] != 0 || sum.States["ESTABLISHED"] != 1 ||
		sum.States["LISTEN"] != 1 || sum.Open != 8 || sum.Totals.Opened != 9 {
		t.Errorf("summary %+v", sum)
	}
	if len(sum.Stuck) != 5 {
		t.Errorf("stuck %+v: want the 5 watched states", sum.Stuck)
	}
}
