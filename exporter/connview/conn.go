package connview

import (
	"math"
	"net/netip"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Conn is one open connection as the agent's API and tcpfsm top show it:
// the schema of GET /api/v1/connections and of top -o json. What tcpfsm
// cannot know is null, never guessed: a connection older than the tracer
// (seeded from the snapshot at start, or found midway) entered its state
// and opened at unknown times; for those the *_at_least fields give the
// lower bound, the time since it was first seen. Where the value is known
// they equal it.
type Conn struct {
	ID     uint64 `json:"id"`
	Role   string `json:"role"`
	Family string `json:"family"`
	Laddr  string `json:"laddr"`
	Lport  uint16 `json:"lport"`
	Raddr  string `json:"raddr"`
	Rport  uint16 `json:"rport"`
	NetNS  uint32 `json:"netns"`
	Owner  *Owner `json:"owner"`
	State  string `json:"state"`
	// StateSince is when the connection entered its state.
	StateSince          *time.Time `json:"state_since"`
	StateSeconds        *float64   `json:"state_seconds"`
	StateSecondsAtLeast float64    `json:"state_seconds_at_least"`
	// FirstSeen is when tcpfsm first knew of the connection.
	FirstSeen              *time.Time `json:"first_seen"`
	LifetimeSeconds        *float64   `json:"lifetime_seconds"`
	LifetimeSecondsAtLeast float64    `json:"lifetime_seconds_at_least"`
	// Bytes, RTT and retransmits as of the connection's last event.
	TxBytes     uint64   `json:"tx_bytes"`
	RxBytes     uint64   `json:"rx_bytes"`
	SrttUs      uint32   `json:"srtt_us"`
	Retransmits uint32   `json:"retransmits"`
	Partial     bool     `json:"partial"`
	Seeded      bool     `json:"seeded"`
	Anomalies   []string `json:"anomalies"`
	// Stuck: in a watched state for longer than its threshold.
	Stuck bool `json:"stuck"`
}

// Owner is the process that owns a connection, as the lifecycle logs name
// it.
type Owner struct {
	Pid       uint32 `json:"pid"`
	Comm      string `json:"comm"`
	CgroupID  uint64 `json:"cgroup_id"`
	Cgroup    string `json:"cgroup,omitempty"`
	Container string `json:"container,omitempty"`
}

// Detail is one connection's record so far: GET /api/v1/connections/{id}.
type Detail struct {
	Conn
	// States lists every state it went through, the current one last.
	States []StateSpan `json:"states"`
	// Close is how it closed (it is in TIME_WAIT, or just closed); null
	// while open.
	Close *Close `json:"close"`
	// Peer is the other end of the connection when it is on this host too.
	Peer *Detail `json:"peer,omitempty"`
}

// Close is who closed a connection and how, as the lifecycle logs say it.
type Close struct {
	By   string `json:"closed_by"`
	Kind string `json:"kind"`
}

// StateSpan is a stay in one state.
type StateSpan struct {
	State string `json:"state"`
	// Since is when it was entered; null when that was before tcpfsm saw
	// the connection.
	Since *time.Time `json:"since"`
	// DwellSeconds is how long it lasted, or has lasted so far for the
	// current state; null when its start is unknown.
	DwellSeconds *float64 `json:"dwell_seconds"`
	Current      bool     `json:"current,omitempty"`
}

// Conns converts the selection, in its order; th marks the stuck ones.
func (s *Selection) Conns(c clock.Clock, th *Thresholds) []Conn {
	out := make([]Conn, len(s.items))
	for i := range s.items {
		out[i] = newConn(&s.items[i], s.Now, c, th)
	}
	return out
}

// Detail converts what SelectOne found.
func (o *One) Detail(c clock.Clock, th *Thresholds) Detail {
	d := newDetail(&o.it, o.Now, c, th)
	if o.HasPeer {
		p := newDetail(&o.peer, o.Now, c, th)
		d.Peer = &p
	}
	return d
}

func newConn(it *item, now uint64, c clock.Clock, th *Thresholds) Conn {
	r := &it.rec
	state, since := r.Current()
	age, exact := r.StateAge(now)
	life, lifeExact := r.Age(now)
	x := Conn{
		ID: r.ID, Role: r.Role.String(), Family: family(r.Family),
		Laddr: r.LocalAddr().String(), Lport: r.Lport, Raddr: r.RemoteAddr().String(), Rport: r.Rport,
		NetNS: r.NetNS, State: state.String(),
		StateSecondsAtLeast: seconds(age), LifetimeSecondsAtLeast: seconds(life),
		TxBytes: r.TxBytes, RxBytes: r.RxBytes, SrttUs: r.SrttUs, Retransmits: r.Retransmits,
		Partial: r.Anomalies&lifecycle.AnomalyPartial != 0, Seeded: r.Seeded,
		Anomalies: r.Anomalies.Names([]string{}),
		Stuck:     th != nil && th.Stuck(state, age),
	}
	if r.FirstSeen() != 0 {
		t := wall(c, r.FirstSeen())
		x.FirstSeen = &t
	}
	if exact {
		t := wall(c, since)
		x.StateSince, x.StateSeconds = &t, ptr(seconds(age))
	}
	if lifeExact {
		x.LifetimeSeconds = ptr(seconds(life))
	}
	if r.OwnerKnown() {
		x.Owner = &Owner{Pid: r.Pid, Comm: string(r.CommBytes()), CgroupID: r.CgroupID, Cgroup: it.cgroup, Container: it.container}
	}
	return x
}

func newDetail(it *item, now uint64, c clock.Clock, th *Thresholds) Detail {
	d := Detail{Conn: newConn(it, now, c, th), States: []StateSpan{}}
	r := &it.rec
	if (r.End != 0 || r.TimeWait != lifecycle.TWNone) && r.Kind != lifecycle.KindOpen {
		d.Close = &Close{By: r.Initiator.String(), Kind: r.Kind.String()}
	}
	spans := r.SpanList()
	state, _ := r.Current()
	for i, sp := range spans {
		x := StateSpan{State: sp.State.String()}
		current := i == len(spans)-1 && sp.State == state && sp.Exit == 0
		if sp.Enter != 0 {
			t := wall(c, sp.Enter)
			x.Since = &t
			switch {
			case sp.Exit != 0:
				x.DwellSeconds = ptr(seconds(sp.Dwell()))
			case current:
				x.DwellSeconds = ptr(seconds(sub(now, sp.Enter)))
			}
		}
		x.Current = current
		d.States = append(d.States, x)
	}
	return d
}

// Record rebuilds a lifecycle record from a detail, for what draws records
// (the ladder): times become wall clock ns, which keeps their offsets.
func (d *Detail) Record() lifecycle.Record {
	var r lifecycle.Record
	r.ID = d.ID
	for role := lifecycle.RoleUnknown; role <= lifecycle.RoleListener; role++ {
		if role.String() == d.Role {
			r.Role = role
		}
	}
	r.Family = probe.AFInet
	if d.Family == "ipv6" {
		r.Family = probe.AFInet6
	}
	r.Laddr, r.Raddr = addrBytes(d.Laddr), addrBytes(d.Raddr)
	r.Lport, r.Rport, r.NetNS = d.Lport, d.Rport, d.NetNS
	if d.Owner != nil {
		r.Owner = probe.OwnerTask
		r.Pid, r.CgroupID, r.Cgroup, r.Container = d.Owner.Pid, d.Owner.CgroupID, d.Owner.Cgroup, d.Owner.Container
		copy(r.Comm[:15], d.Owner.Comm)
	}
	if d.FirstSeen != nil {
		r.Start = uint64(d.FirstSeen.UnixNano())
	}
	for i, sp := range d.States {
		if i >= lifecycle.MaxSpans {
			break
		}
		st, _ := probe.ParseState(sp.State)
		s := lifecycle.Span{State: st}
		if sp.Since != nil {
			s.Enter = uint64(sp.Since.UnixNano())
		}
		if i+1 < len(d.States) && d.States[i+1].Since != nil {
			s.Exit = uint64(d.States[i+1].Since.UnixNano())
		}
		r.Spans[i] = s
		r.NSpan++
		r.State = st
	}
	if d.Partial {
		r.Anomalies |= lifecycle.AnomalyPartial
	}
	r.Seeded = d.Seeded
	if d.Close != nil {
		for i := lifecycle.InitiatorUnknown; i <= lifecycle.InitiatorBoth; i++ {
			if i.String() == d.Close.By {
				r.Initiator = i
			}
		}
		for k := lifecycle.KindOpen; k <= lifecycle.KindListenerClosed; k++ {
			if k.String() == d.Close.Kind {
				r.Kind = k
			}
		}
	}
	r.TxBytes, r.RxBytes, r.SrttUs, r.Retransmits = d.TxBytes, d.RxBytes, d.SrttUs, d.Retransmits
	return r
}

func addrBytes(s string) [16]byte {
	var b [16]byte
	a, err := netip.ParseAddr(s)
	if err != nil {
		return b
	}
	if a.Is4() {
		v := a.As4()
		copy(b[:], v[:])
		return b
	}
	return a.As16()
}

func family(f uint8) string {
	if f == probe.AFInet6 {
		return "ipv6"
	}
	return "ipv4"
}

// seconds rounds to the microsecond: enough, and short in JSON.
func seconds(ns uint64) float64 { return math.Round(float64(ns)/1e3) / 1e6 }

func wall(c clock.Clock, mono uint64) time.Time { return c.Wall(mono).UTC() }

func ptr[T any](v T) *T { return &v }

func sub(a, b uint64) uint64 {
	if b == 0 || a < b {
		return 0
	}
	return a - b
}
