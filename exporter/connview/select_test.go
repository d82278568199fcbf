package connview

import (
	"cmp"
	"errors"
	"math/rand/v2"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// scene is a small host: a server (pid 200, "server", port 80) holding
// three connections its clients closed (CLOSE_WAIT since 100, 200 and
// 300 ms), the clients' ends of those orphaned in FIN_WAIT2 (closed, their
// FIN acknowledged, no FIN back: as ss shows them), an established client
// (pid 100, "client", port 40009 -> 5432) that moved 5000 bytes, a
// listener, and one connection that closed.
func scene(t *testing.T) *feeder {
	f := newFeeder(t)
	srv := func(id uint64, rport uint16) conn {
		return conn{id: id, lport: 80, rport: rport, pid: 200, comm: "server", cgroup: 11}
	}
	cli := func(id uint64, lport uint16) conn {
		return conn{id: id, lport: lport, rport: 80, pid: 100, comm: "client"}
	}
	f.ev(conn{id: 1, lport: 80, pid: 200, comm: "server", cgroup: 11}, 1, probe.StateClose, probe.StateListen, 0, 0, 0)
	for i, at := range []uint64{100, 200, 300} {
		port := uint16(40001 + i)
		c, s := cli(uint64(10+2*i+1), port), srv(uint64(10+2*i), port)
		f.connected(c, 10+uint64(i))
		f.accepted(s, 10+uint64(i))
		f.ev(c, at, probe.StateEstablished, probe.StateFinWait1, probe.FlagSynAcked, 101, 0)
		f.ev(s, at, probe.StateEstablished, probe.StateCloseWait, 0, 0, 100)
		f.ev(c, at+1, probe.StateFinWait1, probe.StateFinWait2, probe.FlagSynAcked|probe.FlagFinAcked, 102, 0)
		f.ev(c, at+1, probe.StateFinWait2, probe.StateClose, probe.FlagSynAcked|probe.FlagFinAcked, 102, 0)
	}
	est := conn{id: 30, lport: 40009, rport: 5432, pid: 100, comm: "client"}
	f.connected(est, 50)
	f.ev(est, 60, probe.StateEstablished, probe.StateEstablished, probe.FlagSynAcked, 5001, 0) // not a transition the kernel makes; moves bytes
	gone := conn{id: 40, lport: 40010, rport: 9, pid: 100, comm: "client"}
	f.connected(gone, 70)
	f.ev(gone, 71, probe.StateEstablished, probe.StateClose, probe.FlagSynAcked, 1, 0)
	f.tick(400)
	return f
}

func selectIDs(t *testing.T, b *lifecycle.Builder, v url.Values, nowMs uint64) ([]uint64, *Selection) {
	t.Helper()
	q, err := ParseQuery(v)
	if err != nil {
		t.Fatalf("ParseQuery(%v): %v", v, err)
	}
	th := DefaultThresholds()
	th[probe.StateCloseWait] = 250 * time.Millisecond
	var s Selection
	s.Select(b, &q, &th, nowMs*ms)
	var ids []uint64
	for _, c := range s.Conns(clk, &th) {
		ids = append(ids, c.ID)
	}
	return ids, &s
}

// Every parameter selects what it says, in the order asked for.
func TestSelect(t *testing.T) {
	f := scene(t)
	for _, c := range []struct {
		query   string
		want    []uint64
		matched int
	}{
		// Default: longest in its state first, listeners out. The
		// established one has been so since 51 ms; CLOSE_WAITs since
		// 100, 200, 300; FIN_WAIT2s since 101, 201, 301.
		{"", []uint64{30, 10, 11, 12, 13, 14, 15}, 7},
		{"state=close_wait", []uint64{10, 12, 14}, 3},
		{"state=CLOSE-WAIT,fin_wait2", []uint64{10, 11, 12, 13, 14, 15}, 6},
		{"state=time_wait", nil, 0},
		{"state=listen", []uint64{1}, 1},
		{"state=close_wait&min_age=750ms", []uint64{10, 12}, 2},
		{"state=close_wait&limit=1", []uint64{10}, 3},
		{"stuck=true", []uint64{10, 12, 14}, 3}, // CLOSE_WAIT's threshold is 250 ms here
		{"pid=200", []uint64{10, 12, 14}, 3},
		{"pid=200&state=listen", []uint64{1}, 1},
		{"comm=client", []uint64{30, 11, 13, 15}, 4},
		{"port=5432", []uint64{30}, 1},
		{"port=40002", []uint64{12, 13}, 2},
		{"lport=40002", []uint64{13}, 1},
		{"rport=40002", []uint64{12}, 1},
		{"search=SERV", []uint64{10, 12, 14}, 3},
		{"search=5432", []uint64{30}, 1},
		{"search=200", []uint64{10, 12, 14}, 3},
		{"sort=bytes", []uint64{30, 10, 11, 12, 13, 14, 15}, 7},
		{"sort=lifetime&state=close_wait,established", []uint64{10, 12, 14, 30}, 4},
		{"family=ipv6", nil, 0},
		{"netns=7&state=established", []uint64{30}, 1},
		{"netns=8", nil, 0},
		{"container=containerd", nil, 0}, // the cgroup names no container
		{"cgroup=system.slice", nil, 0},
	} {
		v, err := url.ParseQuery(c.query)
		if err != nil {
			t.Fatal(err)
		}
		got, s := selectIDs(t, f.b, v, 1000)
		if !slices.Equal(got, c.want) || s.Matched != c.matched {
			t.Errorf("%q: %v (matched %d), want %v (matched %d)", c.query, got, s.Matched, c.want, c.matched)
		}
		if s.Open != 8 {
			t.Errorf("%q: looked at %d, want 8 open records", c.query, s.Open)
		}
	}
}

// The cgroup and container filters, and the owner's cgroup and container
// in the answer, come from what the builder was told of cgroup ids.
func TestSelectCgroup(t *testing.T) {
	f := scene(t)
	f.b.Cgroup(11, "/system.slice/docker-0123456789ab.scope", "docker:0123456789ab")
	for _, c := range []struct {
		query string
		want  []uint64
	}{
		{"container=docker:0123456789ab", []uint64{10, 12, 14}},
		{"container=0123", []uint64{10, 12, 14}},
		{"container=docker:9", nil},
		{"cgroup=system.slice", []uint64{10, 12, 14}},
		{"cgroup=/system.slice/docker-0123456789ab.scope/", []uint64{10, 12, 14}},
		{"cgroup=/system.sl", nil},
	} {
		v, _ := url.ParseQuery(c.query)
		if got, _ := selectIDs(t, f.b, v, 1000); !slices.Equal(got, c.want) {
			t.Errorf("%q: %v, want %v", c.query, got, c.want)
		}
	}
	_, s := selectIDs(t, f.b, url.Values{"pid": {"200"}}, 1000)
	o := s.Conns(clk, nil)[0].Owner
	if o == nil || o.Pid != 200 || o.Comm != "server" || o.CgroupID != 11 ||
		o.Cgroup != "/system.slice/docker-0123456789ab.scope" || o.Container != "docker:0123456789ab" {
		t.Errorf("owner %+v", o)
	}
}

// The bounded heap keeps exactly what a full sort would put first, for
// every sort and limit, ties broken by id.
func TestSelectTopK(t *testing.T) {
	f := newFeeder(t)
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 3000
	for i := 0; i < n; i++ {
		c := conn{id: uint64(i + 1), lport: uint16(1000 + i), rport: 80, pid: 100, comm: "c"}
		at := uint64(rng.IntN(50)) * 10 // many ties
		f.connected(c, 10+at)
		f.ev(c, 20+at, probe.StateEstablished, probe.StateEstablished, probe.FlagSynAcked, uint64(rng.IntN(20)), 0)
	}
	f.tick(1000)
	now := uint64(2000 * ms)
	var all []*lifecycle.Record
	for r := range f.b.Open() {
		all = append(all, r)
	}
	for s := SortAge; s < sorts; s++ {
		want := slices.Clone(all)
		slices.SortFunc(want, func(a, b *lifecycle.Record) int {
			return cmp.Or(cmp.Compare(sortKey(b, s, now), sortKey(a, s, now)), cmp.Compare(a.ID, b.ID))
		})
		for _, k := range []int{1, 7, 100, n - 1, n, MaxLimit} {
			q := Query{Sort: s, Limit: k}
			var sel Selection
			sel.Select(f.b, &q, nil, now)
			if sel.Len() != min(k, n) || sel.Matched != n {
				t.Fatalf("sort %s limit %d: %d kept, %d matched", s, k, sel.Len(), sel.Matched)
			}
			for i := range sel.items {
				if sel.items[i].rec.ID != want[i].ID {
					t.Fatalf("sort %s limit %d: #%d is %d, want %d", s, k, i, sel.items[i].rec.ID, want[i].ID)
				}
			}
		}
	}
}

func TestParseQuery(t *testing.T) {
	for _, c := range []struct{ query, param string }{
		{"states=close_wait", "states"},
		{"state=closed", "state"},
		{"state=NEW_SYN_RECV", "state"},
		{"state=bogus", "state"},
		{"min_age=5", "min_age"},
		{"min_age=-1s", "min_age"},
		{"port=0", "port"},
		{"port=65536", "port"},
		{"lport=http", "lport"},
		{"rport=", ""}, // empty lists are nothing
		{"pid=0", "pid"},
		{"pid=1&pid=2", "pid"},
		{"netns=x", "netns"},
		{"family=inet", "family"},
		{"comm=", "comm"},
		{"stuck=maybe", "stuck"},
		{"sort=pid", "sort"},
		{"limit=0", "limit"},
		{"limit=10001", "limit"},
		{"limit=ten", "limit"},
	} {
		v, _ := url.ParseQuery(c.query)
		_, err := ParseQuery(v)
		if c.param == "" {
			if err != nil {
				t.Errorf("%q: %v", c.query, err)
			}
			continue
		}
		var pe *ParamError
		if !errors.As(err, &pe) || pe.Param != c.param {
			t.Errorf("%q: %v, want an error naming %s", c.query, err, c.param)
		}
	}
	// Values writes what ParseQuery reads back.
	v, _ := url.ParseQuery("state=close_wait,FIN_WAIT2&min_age=1m30s&port=80&lport=1,2&rport=3&pid=4&comm=nginx" +
		"&container=docker:ab&cgroup=/a/b&family=ipv6&netns=5&search=x&stuck=1&sort=bytes&limit=10")
	q, err := ParseQuery(v)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseQuery(q.Values())
	if err != nil {
		t.Fatalf("%v: %v", q.Values(), err)
	}
	if !slices.Equal(q.States, []probe.State{probe.StateCloseWait, probe.StateFinWait2}) || q.MinAge != 90*time.Second ||
		q.Family != probe.AFInet6 || !q.Stuck || q.Sort != SortBytes || q.Limit != 10 {
		t.Errorf("parsed %+v", q)
	}
	if !slices.Equal(back.States, q.States) || back.MinAge != q.MinAge || !slices.Equal(back.Ports, q.Ports) ||
		!slices.Equal(back.LocalPorts, q.LocalPorts) || !slices.Equal(back.RemotePorts, q.RemotePorts) ||
		back.Pid != q.Pid || back.Comm != q.Comm || back.Container != q.Container || back.Cgroup != q.Cgroup ||
		back.Family != q.Family || back.NetNS != q.NetNS || back.Search != q.Search || back.Stuck != q.Stuck ||
		back.Sort != q.Sort || back.Limit != q.Limit {
		t.Errorf("round trip: %+v, want %+v", back, q)
	}
}
