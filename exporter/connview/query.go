package connview

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Sort orders the connections shown, longest or largest first.
type Sort uint8

const (
	SortAge      Sort = iota // time in the current state
	SortLifetime             // time since the connection opened (or was first seen)
	SortBytes                // payload sent and received
	sorts
)

var sortNames = [sorts]string{"age", "lifetime", "bytes"}

func (s Sort) String() string {
	if s < sorts {
		return sortNames[s]
	}
	return fmt.Sprintf("sort(%d)", uint8(s))
}

// ParseSort reads a sort key's name.
func ParseSort(name string) (Sort, error) {
	for i, n := range sortNames {
		if strings.EqualFold(name, n) {
			return Sort(i), nil
		}
	}
	return 0, fmt.Errorf("want %s", strings.Join(sortNames[:], ", "))
}

// Limits of Query.Limit.
const (
	DefaultLimit = 1000
	// MaxLimit bounds a response: about 600 bytes of JSON each, 6 MB.
	MaxLimit = 10000
)

// Query selects and orders open connections. The zero value selects every
// open connection but listeners, longest in its state first, up to
// DefaultLimit.
type Query struct {
	// States are the current states wanted; none: every state but LISTEN
	// (listeners are shown only when asked for, as ss does).
	States []probe.State
	// MinAge: at least this long in the current state (for a connection
	// whose entry into it is unknown, since it was first seen).
	MinAge time.Duration
	// Ports: the local or the remote port is one of these.
	Ports []uint16
	// LocalPorts, RemotePorts: as trace's --lport and --rport.
	LocalPorts, RemotePorts []uint16
	Pid                     uint32
	Comm                    string // the owner's command name, exactly
	Container               string // runtime:id, or the id alone, or a prefix of it
	Cgroup                  string // a cgroup v2 path: the owner's cgroup is it or below it
	Family                  uint8  // probe.AFInet or probe.AFInet6; 0 both
	NetNS                   uint32
	// Search matches the owner's command name as a substring, or a pid or
	// a port when it is a number: what a person types into top's search.
	Search string
	// Stuck: only connections past their state's threshold.
	Stuck bool
	Sort  Sort
	Limit int // 0: DefaultLimit
}

// ParamError is a query parameter that cannot be used.
type ParamError struct {
	Param string
	Msg   string
}

func (e *ParamError) Error() string { return e.Param + ": " + e.Msg }

func paramErr(param, format string, args ...any) *ParamError {
	return &ParamError{param, fmt.Sprintf(format, args...)}
}

// The query parameters ParseQuery knows.
var params = []string{"state", "min_age", "port", "lport", "rport", "pid", "comm", "container", "cgroup",
	"family", "netns", "search", "stuck", "sort", "limit"}

// ParseQuery reads a query from URL parameters. A parameter may be given
// more than once or with commas where it is a list (state, port, lport,
// rport). Any error is a *ParamError naming the parameter; unknown
// parameters are errors too, so a typo never selects everything.
func ParseQuery(v url.Values) (Query, error) {
	var q Query
	for name := range v {
		if !slices.Contains(params, name) {
			return q, paramErr(name, "unknown parameter (want one of %s)", strings.Join(params, ", "))
		}
	}
	for _, name := range params {
		if len(v[name]) > 1 && !slices.Contains([]string{"state", "port", "lport", "rport"}, name) {
			return q, paramErr(name, "given %d times: want it once", len(v[name]))
		}
	}
	for _, s := range list(v["state"]) {
		st, err := probe.ParseState(s)
		if err != nil || st == probe.StateClose || st == probe.StateNewSynRecv || st == probe.StateBoundInactive {
			return q, paramErr("state", "%q is no state an open connection is in (want e.g. ESTABLISHED, CLOSE_WAIT, TIME_WAIT)", s)
		}
		if !slices.Contains(q.States, st) {
			q.States = append(q.States, st)
		}
	}
	var err error
	if s, ok := single(v, "min_age"); ok {
		if q.MinAge, err = time.ParseDuration(s); err != nil || q.MinAge < 0 {
			return q, paramErr("min_age", "%q: want a duration such as 30s or 5m", s)
		}
	}
	for _, p := range []struct {
		name string
		dst  *[]uint16
	}{{"port", &q.Ports}, {"lport", &q.LocalPorts}, {"rport", &q.RemotePorts}} {
		for _, s := range list(v[p.name]) {
			n, err := strconv.ParseUint(s, 10, 16)
			if err != nil || n == 0 {
				return q, paramErr(p.name, "%q: want a port from 1 to 65535", s)
			}
			*p.dst = append(*p.dst, uint16(n))
		}
	}
	if s, ok := single(v, "pid"); ok {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil || n == 0 {
			return q, paramErr("pid", "%q: want a process id", s)
		}
		q.Pid = uint32(n)
	}
	if s, ok := single(v, "netns"); ok {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil || n == 0 {
			return q, paramErr("netns", "%q: want a network namespace inode number", s)
		}
		q.NetNS = uint32(n)
	}
	if s, ok := single(v, "family"); ok {
		switch strings.ToLower(s) {
		case "ipv4":
			q.Family = probe.AFInet
		case "ipv6":
			q.Family = probe.AFInet6
		default:
			return q, paramErr("family", "%q: want ipv4 or ipv6", s)
		}
	}
	for _, p := range []struct {
		name string
		dst  *string
	}{{"comm", &q.Comm}, {"container", &q.Container}, {"cgroup", &q.Cgroup}, {"search", &q.Search}} {
		if s, ok := single(v, p.name); ok {
			if s == "" {
				return q, paramErr(p.name, "empty: leave it out to select every %s", p.name)
			}
			*p.dst = s
		}
	}
	if len(q.Comm) > 15 {
		// The kernel keeps 15 bytes of a command name.
		q.Comm = q.Comm[:15]
	}
	if s, ok := single(v, "stuck"); ok {
		if q.Stuck, err = strconv.ParseBool(s); err != nil {
			return q, paramErr("stuck", "%q: want true or false", s)
		}
	}
	if s, ok := single(v, "sort"); ok {
		if q.Sort, err = ParseSort(s); err != nil {
			return q, paramErr("sort", "%q: %v", s, err)
		}
	}
	if s, ok := single(v, "limit"); ok {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxLimit {
			return q, paramErr("limit", "%q: want 1 to %d", s, MaxLimit)
		}
		q.Limit = n
	}
	return q, nil
}

// Values writes the query as URL parameters ParseQuery reads back.
func (q *Query) Values() url.Values {
	v := url.Values{}
	for _, st := range q.States {
		v.Add("state", st.String())
	}
	if q.MinAge > 0 {
		v.Set("min_age", q.MinAge.String())
	}
	for _, p := range []struct {
		name  string
		ports []uint16
	}{{"port", q.Ports}, {"lport", q.LocalPorts}, {"rport", q.RemotePorts}} {
		for _, n := range p.ports {
			v.Add(p.name, strconv.Itoa(int(n)))
		}
	}
	if q.Pid != 0 {
		v.Set("pid", strconv.FormatUint(uint64(q.Pid), 10))
	}
	if q.NetNS != 0 {
		v.Set("netns", strconv.FormatUint(uint64(q.NetNS), 10))
	}
	switch q.Family {
	case probe.AFInet:
		v.Set("family", "ipv4")
	case probe.AFInet6:
		v.Set("family", "ipv6")
	}
	for name, s := range map[string]string{"comm": q.Comm, "container": q.Container, "cgroup": q.Cgroup, "search": q.Search} {
		if s != "" {
			v.Set(name, s)
		}
	}
	if q.Stuck {
		v.Set("stuck", "true")
	}
	if q.Sort != SortAge {
		v.Set("sort", q.Sort.String())
	}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	return v
}

// limit is the query's limit with its default.
func (q *Query) limit() int {
	if q.Limit <= 0 {
		return DefaultLimit
	}
	return min(q.Limit, MaxLimit)
}

// list splits values at commas, dropping empty items.
func list(values []string) []string {
	var out []string
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

func single(v url.Values, name string) (string, bool) {
	s, ok := v[name]
	if !ok || len(s) == 0 {
		return "", false
	}
	return strings.TrimSpace(s[0]), true
}
