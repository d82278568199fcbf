package connview

import (
	"cmp"
	"slices"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// GroupBy says which owner fields the stuck counts are split by: the
// optional labels of the connection metrics.
type GroupBy struct {
	Port      bool // the listening port of accepted connections
	Comm      bool
	Container bool
}

// StuckGroup is the connections in one watched state (and one owner, when
// grouped): how many there are, how many are past the state's threshold,
// and the longest time one of them has been in it (for connections whose
// entry is unknown, the time since they were first seen: a lower bound).
type StuckGroup struct {
	State     probe.State
	Port      string // "" unless grouped by port and accepted
	Comm      string // "" unless grouped by comm and the owner is known
	Container string // "" unless grouped by container and it has one
	Count     int
	Stuck     int
	OldestNs  uint64
}

// Stuck counts the connections in watched states. Count runs with the
// builder locked and only adds to a small table keyed by the raw fields;
// Groups, after, makes the strings. A Stuck is reused from one Count to
// the next.
type Stuck struct {
	groups     map[groupKey]*StuckGroup
	containers map[uint64]string
	order      []groupKey
}

type groupKey struct {
	state    probe.State
	port     uint16
	comm     [16]byte
	cgroupID uint64
}

// Count reads every open connection in a state th watches, measuring at
// now. Call it with the builder locked.
func (s *Stuck) Count(b *lifecycle.Builder, th *Thresholds, by GroupBy, now uint64) {
	if s.groups == nil {
		s.groups, s.containers = map[groupKey]*StuckGroup{}, map[uint64]string{}
	}
	clear(s.groups)
	clear(s.containers)
	s.order = s.order[:0]
	for _, st := range WatchedStates {
		if th.Watched(st) {
			// Every watched state has its group, empty or not.
			s.add(groupKey{state: st})
		}
	}
	for r := range b.Visit() {
		state, _ := r.Current()
		if !th.Watched(state) {
			continue
		}
		k := groupKey{state: state}
		if r.OwnerKnown() {
			if by.Comm {
				k.comm = r.Comm
			}
			if by.Container {
				k.cgroupID = r.CgroupID
			}
		}
		if by.Port && r.Role == lifecycle.RolePassive {
			k.port = r.Lport
		}
		g := s.groups[k]
		if g == nil {
			g = s.add(k)
			if k.cgroupID != 0 {
				if _, ok := s.containers[k.cgroupID]; !ok {
					_, c := b.CgroupOf(k.cgroupID)
					if r.Container != "" {
						c = r.Container
					}
					s.containers[k.cgroupID] = c
				}
			}
		}
		age, _ := r.StateAge(now)
		g.Count++
		if th.Stuck(state, age) {
			g.Stuck++
		}
		g.OldestNs = max(g.OldestNs, age)
	}
}

func (s *Stuck) add(k groupKey) *StuckGroup {
	g := &StuckGroup{State: k.state}
	s.groups[k] = g
	s.order = append(s.order, k)
	return g
}

// Groups lists what Count counted, in state order, then by owner fields;
// groups of one state that differ only in a field not grouped by are one.
func (s *Stuck) Groups() []StuckGroup {
	out := make([]StuckGroup, 0, len(s.order))
	for _, k := range s.order {
		g := *s.groups[k]
		if k.port != 0 {
			g.Port = itoa(k.port)
		}
		g.Comm = string(probe.TrimComm(&k.comm))
		g.Container = s.containers[k.cgroupID]
		out = append(out, g)
	}
	slices.SortStableFunc(out, func(a, b StuckGroup) int {
		return cmp.Or(cmp.Compare(a.State, b.State), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Comm, b.Comm),
			cmp.Compare(a.Container, b.Container))
	})
	// Two cgroups of one container, or none, make one group.
	merged := out[:0]
	for _, g := range out {
		if n := len(merged); n > 0 {
			last := &merged[n-1]
			if last.State == g.State && last.Port == g.Port && last.Comm == g.Comm && last.Container == g.Container {
				last.Count += g.Count
				last.Stuck += g.Stuck
				last.OldestNs = max(last.OldestNs, g.OldestNs)
				continue
			}
		}
		merged = append(merged, g)
	}
	return merged
}

func itoa(p uint16) string {
	var b [5]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + p%10)
		p /= 10
		if p == 0 {
			return string(b[i:])
		}
	}
}
