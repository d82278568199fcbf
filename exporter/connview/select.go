package connview

import (
	"bytes"
	"slices"
	"strconv"
	"strings"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Selection is what Select copies out of the builder: the connections a
// query matched, the Limit first in its order, as record copies. Select
// runs with the builder locked and does only that: one pass over the open
// records keeping the best Limit in a heap of pointers, then one copy of
// each kept record. Everything else (order, strings, JSON) happens after,
// outside the lock. A Selection is reused from one Select to the next.
type Selection struct {
	// Now is the monotonic time the ages are measured at.
	Now uint64
	// Matched is how many open connections matched, Open how many were
	// looked at.
	Matched, Open int

	items []item
	heap  []cand
	kept  []lifecycle.Record // the candidates' copies, by cand.at
	m     matcher
}

// item is one selected connection, copied.
type item struct {
	rec               lifecycle.Record
	cgroup, container string
}

// cand is a connection in the running top-K: its sort key, its id (the
// tie-break, lower first) and where its copy is in kept (the builder
// lends each record for one step of its iteration only).
type cand struct {
	key, id uint64
	at      int
}

// better orders candidates: larger key first, then lower id.
func better(a, b *cand) bool {
	if a.key != b.key {
		return a.key > b.key
	}
	return a.id < b.id
}

// Select reads the open connections the query matches, measuring ages at
// now (CLOCK_MONOTONIC ns). Call it with the builder locked; th decides
// what Query.Stuck selects.
func (s *Selection) Select(b *lifecycle.Builder, q *Query, th *Thresholds, now uint64) {
	s.Now, s.Matched, s.Open = now, 0, 0
	s.items = s.items[:0]
	s.heap = s.heap[:0]
	s.kept = s.kept[:0]
	s.m.reset(b, q, th, now)
	k := q.limit()
	for r := range b.Visit() {
		s.Open++
		if !s.m.match(r) {
			continue
		}
		s.Matched++
		c := cand{key: sortKey(r, q.Sort, now), id: r.ID}
		switch {
		case len(s.heap) < k:
			c.at = len(s.kept)
			s.kept = append(s.kept, *r)
			s.heap = append(s.heap, c)
			siftUp(s.heap, len(s.heap)-1)
		case better(&c, &s.heap[0]):
			c.at = s.heap[0].at
			s.kept[c.at] = *r
			s.heap[0] = c
			siftDown(s.heap, 0)
		}
	}
	slices.SortFunc(s.heap, func(a, b cand) int {
		if better(&a, &b) {
			return -1
		}
		return 1
	})
	for _, c := range s.heap {
		r := &s.kept[c.at]
		path, container := b.CgroupOf(r.CgroupID)
		if r.Cgroup != "" {
			path, container = r.Cgroup, r.Container
		}
		s.items = append(s.items, item{rec: *r, cgroup: path, container: container})
	}
	// No pointer into the builder outlives the lock, nor the copies'
	// names past the selection.
	clear(s.kept)
	s.m.b = nil
}

// Len is how many connections were selected.
func (s *Selection) Len() int { return len(s.items) }

// The heap keeps the worst kept candidate at its root.
func siftUp(h []cand, i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !better(&h[p], &h[i]) {
			return
		}
		h[p], h[i] = h[i], h[p]
		i = p
	}
}

func siftDown(h []cand, i int) {
	for {
		worst, l, r := i, 2*i+1, 2*i+2
		if l < len(h) && better(&h[worst], &h[l]) {
			worst = l
		}
		if r < len(h) && better(&h[worst], &h[r]) {
			worst = r
		}
		if worst == i {
			return
		}
		h[i], h[worst] = h[worst], h[i]
		i = worst
	}
}

// sortKey is a record's key for a sort: its lower bounds where the exact
// value is unknown.
func sortKey(r *lifecycle.Record, s Sort, now uint64) uint64 {
	switch s {
	case SortLifetime:
		age, _ := r.Age(now)
		return age
	case SortBytes:
		return r.TxBytes + r.RxBytes
	}
	age, _ := r.StateAge(now)
	return age
}

// matcher applies a query to records, prepared once per Select.
type matcher struct {
	q        *Query
	th       *Thresholds
	b        *lifecycle.Builder
	now      uint64
	states   [probe.MaxState + 1]bool
	anyState bool
	minAge   uint64
	comm     []byte
	search   []byte // lower case
	num      uint64
	isNum    bool
}

func (m *matcher) reset(b *lifecycle.Builder, q *Query, th *Thresholds, now uint64) {
	*m = matcher{q: q, th: th, b: b, now: now, minAge: uint64(q.MinAge), comm: []byte(q.Comm), search: []byte(strings.ToLower(q.Search))}
	for _, st := range q.States {
		if st <= probe.MaxState {
			m.states[st] = true
			m.anyState = true
		}
	}
	if n, err := strconv.ParseUint(q.Search, 10, 32); err == nil {
		m.num, m.isNum = n, true
	}
}

func (m *matcher) match(r *lifecycle.Record) bool {
	q := m.q
	state, _ := r.Current()
	if m.anyState {
		if !m.states[state] {
			return false
		}
	} else if state == probe.StateListen || r.Role == lifecycle.RoleListener {
		return false
	}
	if q.Family != 0 && r.Family != q.Family || q.NetNS != 0 && r.NetNS != q.NetNS {
		return false
	}
	if len(q.Ports) > 0 && !slices.Contains(q.Ports, r.Lport) && !slices.Contains(q.Ports, r.Rport) ||
		len(q.LocalPorts) > 0 && !slices.Contains(q.LocalPorts, r.Lport) ||
		len(q.RemotePorts) > 0 && !slices.Contains(q.RemotePorts, r.Rport) {
		return false
	}
	owner := r.OwnerKnown()
	if q.Pid != 0 && (!owner || r.Pid != q.Pid) {
		return false
	}
	if len(m.comm) > 0 && (!owner || !bytes.Equal(r.CommBytes(), m.comm)) {
		return false
	}
	if m.minAge > 0 || q.Stuck {
		age, _ := r.StateAge(m.now)
		if age < m.minAge || q.Stuck && !m.th.Stuck(state, age) {
			return false
		}
	}
	if q.Container != "" || q.Cgroup != "" {
		if !owner {
			return false
		}
		path, container := r.Cgroup, r.Container
		if path == "" {
			path, container = m.b.CgroupOf(r.CgroupID)
		}
		if q.Container != "" && !containerMatches(container, q.Container) || q.Cgroup != "" && !cgroupMatches(path, q.Cgroup) {
			return false
		}
	}
	if len(m.search) > 0 {
		hit := owner && containsFold(r.CommBytes(), m.search)
		if m.isNum {
			hit = hit || owner && uint64(r.Pid) == m.num || uint64(r.Lport) == m.num || uint64(r.Rport) == m.num
		}
		if !hit {
			return false
		}
	}
	return true
}

// containerMatches: "runtime:id", the id alone, or a prefix of either
// (docker ps shows 12 characters).
func containerMatches(container, want string) bool {
	if container == "" {
		return false
	}
	if strings.HasPrefix(container, want) {
		return true
	}
	_, id, ok := strings.Cut(container, ":")
	return ok && strings.HasPrefix(id, want)
}

// cgroupMatches: the cgroup is the one named or below it; the leading
// slash is optional.
func cgroupMatches(path, want string) bool {
	if path == "" {
		return false
	}
	path = "/" + strings.Trim(path, "/")
	want = "/" + strings.Trim(want, "/")
	return want == "/" || path == want || strings.HasPrefix(path, want+"/")
}

// containsFold reports whether b holds lower, ignoring ASCII case.
func containsFold(b, lower []byte) bool {
	for i := 0; i+len(lower) <= len(b); i++ {
		j := 0
		for j < len(lower) && asciiLower(b[i+j]) == lower[j] {
			j++
		}
		if j == len(lower) {
			return true
		}
	}
	return false
}

func asciiLower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// One is what SelectOne copies of one connection: its record and, when
// the other end is on this host too, that end's.
type One struct {
	Now     uint64
	Found   bool
	HasPeer bool
	it      item
	peer    item
}

// SelectOne copies the record of connection id and its peer's, measuring
// ages at now. Call it with the builder locked. A record the builder no
// longer holds is not found.
func (o *One) SelectOne(b *lifecycle.Builder, id uint64, now uint64) {
	*o = One{Now: now}
	r, ok := b.Lookup(id)
	if !ok {
		return
	}
	o.Found = true
	o.it = copyItem(b, r)
	if p, ok := b.Peer(r); ok {
		o.HasPeer = true
		o.peer = copyItem(b, p)
	}
}

func copyItem(b *lifecycle.Builder, r *lifecycle.Record) item {
	path, container := r.Cgroup, r.Container
	if path == "" {
		path, container = b.CgroupOf(r.CgroupID)
	}
	return item{rec: *r, cgroup: path, container: container}
}
