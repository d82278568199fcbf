// Package metrics turns tcpfsm's events and connection records into
// Prometheus metrics: a hand-written collector that emits counters and
// gauges as const metrics, and owns its duration histograms (classic
// buckets, native buckets for scrapers that ask, exemplars naming the
// connection). Callers register it in their own registry.
package metrics

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcpfsm/tcpfsm/internal/buildinfo"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Label names the optional labels.
type Label string

const (
	LabelPort Label = "port" // the local listening port of an accepted connection
	LabelComm Label = "comm" // the owner's command name
	// LabelContainer is the owner's container: its name when the runtime
	// named it (a pod's container name, a plain container's name), else
	// runtime:id from its cgroup.
	LabelContainer Label = "container"
	LabelNamespace Label = "namespace" // the owner's pod's namespace
	LabelPod       Label = "pod"       // the owner's pod (churns: most pods end up "other")
	LabelWorkload  Label = "workload"  // the owner's pod's workload, kind/name as kubectl takes it: deployment/web
)

// Labels lists every optional label, in the order of their names.
var Labels = []Label{LabelPort, LabelComm, LabelContainer, LabelNamespace, LabelPod, LabelWorkload}

// maxOptional is how many optional labels a series can have.
const maxOptional = 6

// ParseLabel validates an optional label name.
func ParseLabel(s string) (Label, bool) {
	for _, l := range Labels {
		if string(l) == s {
			return l, true
		}
	}
	return "", false
}

// NeedsMetadata reports whether a label comes from the container
// runtime's metadata.
func (l Label) NeedsMetadata() bool {
	return l == LabelContainer || l == LabelNamespace || l == LabelPod || l == LabelWorkload
}

// Options choose the optional labels. Each has a budget of distinct
// values; values beyond it are counted under "other".
type Options struct {
	Labels     []Label
	LabelLimit int // default DefaultLabelLimit
	// ContainerOf names the container of a cgroup id ("" for none), for
	// the container label of connections opening when the events come
	// without metadata (Event rather than EventMeta).
	ContainerOf func(cgroupID uint64) string
	// Names, when set, says what the container runtime told of a
	// container, for the metadata labels of gauges of open connections
	// (tcpfsm_connections_stuck); records and events carry theirs.
	Names func(k metadata.Key) (metadata.Meta, bool)
	// NoExemplars turns off the connection-id exemplars.
	NoExemplars bool
}

// Snapshot is what the collector reads from the tracer at each scrape.
type Snapshot struct {
	States   [probe.MaxState + 1]int // connections in each state now, TIME_WAIT included
	Tracked  int
	Builder  lifecycle.Stats
	Lost     probe.LostCounts
	Programs []probe.ProgramStats
	// EphemeralPorts is how many local ports connect() may pick from
	// (EphemeralPorts reads it); 0 leaves tcpfsm_ephemeral_ports out.
	EphemeralPorts int
	// Metadata is the container runtime resolver's, nil without one
	// (then no tcpfsm_metadata_* series); RecordWaits are the records
	// that waited for it.
	Metadata    *metadata.Stats
	RecordWaits RecordWaits
}

// RecordWaits count the records that waited for their container's
// metadata or their peer's record, by outcome.
type RecordWaits struct {
	Resolved, TimedOut, Dropped uint64
}

// BuildInfo labels tcpfsm_build_info.
type BuildInfo = buildinfo.Info

// Metrics counts; it is a prometheus.Collector and a lifecycle.Handler.
type Metrics struct {
	opts     Options
	snapshot func() Snapshot
	build    BuildInfo

	// Per event: atomics, no lock.
	events      atomic.Uint64
	transitions [probe.MaxState + 1][probe.MaxState + 1]atomic.Uint64
	resets      [resetDirections]atomic.Uint64
	synRetrans  atomic.Uint64

	mu       sync.Mutex
	opened   map[labelKey]*uint64
	closed   map[labelKey]*uint64
	failures map[failureKey]*uint64
	// Without optional labels, each counter's series once it exists, by
	// role, initiator and kind (bounded enums), so that a record hashes
	// no label values; under mu, as the maps.
	plainOpened          [roleSeries]*uint64
	plainClosed          [plainRoles][plainInitiators][plainKinds]*uint64
	plainFailures        [failureReasons]*uint64
	bytesSent, bytesRecv uint64
	attributionMisses    uint64
	budgets              map[Label]*budget

	handshake, lifetime, stateDur *prometheus.HistogramVec
	lastExemplar                  [exemplarHistograms]atomic.Int64 // unix ns of each histogram's last exemplar
	// The clock Closed read for the exemplar checks, and its record's id:
	// a record finished right after its close (no TIME_WAIT) reuses it.
	closedNow atomic.Int64
	closedID  atomic.Uint64
	// Each series' observer once it exists, so that a record's
	// observations hash no label values: the state durations by state,
	// handshake and lifetime by role when there are no optional labels.
	stateObs        [probe.MaxState + 1]atomic.Pointer[prometheus.Observer]
	handshakeByRole [roleSeries]atomic.Pointer[prometheus.Observer]
	lifetimeByRole  [roleSeries]atomic.Pointer[prometheus.Observer]

	descs descs
}

// failureKey is a connect failure's reason and optional label values.
type failureKey struct {
	reason int
	opt    [maxOptional]string
}

// labelKey is a counter's label values, fixed and optional.
type labelKey struct {
	role, initiator, kind string
	opt                   [maxOptional]string
}

// The histograms that carry exemplars, indexing lastExemplar.
const (
	exemplarHandshake = iota
	exemplarLifetime
	exemplarStateDuration
	exemplarHistograms // how many there are
)

// The roles a connection's histograms have series for (a listener has
// none), indexing handshakeByRole and lifetimeByRole.
const (
	roleSeriesActive = iota
	roleSeriesPassive
	roleSeries
)

// The bounds of plainClosed: every role, initiator and kind there is.
const (
	plainRoles      = 4
	plainInitiators = 4
	plainKinds      = 16
)

// Reset directions, indexing resets.
const (
	resetSent = iota
	resetReceived
	resetDirections
)

// Connect failure reasons.
const (
	failRefused = iota
	failTimeout
	failReset
	failOther
	failureReasons
)

var failureNames = [failureReasons]string{"refused", "timeout", "reset", "other"}

// Buckets from a microsecond to about 18 minutes, a factor of 4 apart: a
// loopback handshake and a TIME_WAIT fit the same scale.
var durationBuckets = prometheus.ExponentialBuckets(1e-6, 4, 16)

// The label budget's default, and the most values a label may keep: each
// value of each optional label multiplies the series of the connection
// metrics.
const (
	DefaultLabelLimit = 20
	MaxLabelLimit     = 1000
)

// New returns the collector; snapshot is called once per scrape.
func New(opts Options, build BuildInfo, snapshot func() Snapshot) *Metrics {
	if opts.LabelLimit <= 0 {
		opts.LabelLimit = DefaultLabelLimit
	}
	m := &Metrics{opts: opts, snapshot: snapshot, build: build,
		opened: map[labelKey]*uint64{}, closed: map[labelKey]*uint64{}, budgets: map[Label]*budget{},
		failures: map[failureKey]*uint64{}}
	for r := range failureReasons {
		m.plainFailures[r] = seriesCounter(m.failures, failureKey{reason: r}) // every reason, from the start
	}
	for _, l := range opts.Labels {
		m.budgets[l] = &budget{limit: opts.LabelLimit, values: map[string]string{}}
	}
	opt := m.optionalNames()
	hist := func(name, help string, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: name, Help: help, Buckets: durationBuckets,
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, labels)
	}
	m.handshake = hist("tcpfsm_handshake_duration_seconds",
		"Time from SYN_SENT (active) or SYN_RECV (passive) to ESTABLISHED.", append([]string{"role"}, opt...)...)
	m.lifetime = hist("tcpfsm_connection_duration_seconds",
		"Time from a connection's first transition to CLOSE, TIME_WAIT not included.", append([]string{"role"}, opt...)...)
	m.stateDur = hist("tcpfsm_state_duration_seconds",
		"Time connections spent in each state, TIME_WAIT included.", "state")
	m.descs = newDescs(opt)
	return m
}

// seriesCounter is k's counter in mp, made at its first use; call with mu
// held.
func seriesCounter[K comparable](mp map[K]*uint64, k K) *uint64 {
	if c := mp[k]; c != nil {
		return c
	}
	c := new(uint64)
	mp[k] = c
	return c
}

// plainCounter is a counter of a series without optional labels through
// its slot (looked up once); call with mu held.
func plainCounter[K comparable](slot **uint64, mp map[K]*uint64, k K) *uint64 {
	if *slot == nil {
		*slot = seriesCounter(mp, k)
	}
	return *slot
}

func (m *Metrics) optionalNames() []string {
	var names []string
	for _, l := range m.opts.Labels {
		names = append(names, string(l))
	}
	return names
}

// budget keeps a label's value set bounded: the first limit values get
// their own series, later ones share "other".
type budget struct {
	limit  int
	values map[string]string // a value kept, to itself: looked up by bytes without allocating
}

func (b *budget) value(v string) string {
	if v == "" {
		return ""
	}
	if _, ok := b.values[v]; ok {
		return v
	}
	if len(b.values) < b.limit {
		b.values[v] = v
		return v
	}
	return "other"
}

// valueBytes is value for bytes: a value seen before costs no string.
func (b *budget) valueBytes(v []byte) string {
	if len(v) == 0 {
		return ""
	}
	if s, ok := b.values[string(v)]; ok {
		return s
	}
	if len(b.values) < b.limit {
		s := string(v)
		b.values[s] = s
		return s
	}
	return "other"
}

// workload is the workload label's value, kubectl's kind/name:
// deployment/web.
func (b *budget) workload(w *metadata.Workload) string {
	var buf [128]byte
	v := append(append(append(buf[:0], w.Kind...), '/'), w.Name...)
	for i := 0; i < len(w.Kind); i++ {
		if c := v[i]; 'A' <= c && c <= 'Z' {
			v[i] = c + 'a' - 'A'
		}
	}
	return b.valueBytes(v)
}

// stateLabel is a state as a label value: lower case.
var stateLabel = func() [probe.MaxState + 1]string {
	var s [probe.MaxState + 1]string
	for st := probe.StateEstablished; st <= probe.MaxState; st++ {
		s[st] = strings.ToLower(st.String())
	}
	return s
}()

// Event counts one kernel event. It does not allocate.
func (m *Metrics) Event(e *probe.Event) { m.event(e, nil, false) }

// EventMeta counts one kernel event whose owner's container is md, as
// far as it is known (nil: in none; a Meta without names: not named
// yet). It does not allocate.
func (m *Metrics) EventMeta(e *probe.Event, md *metadata.Meta) { m.event(e, md, true) }

func (m *Metrics) event(e *probe.Event, md *metadata.Meta, withMeta bool) {
	m.events.Add(1)
	switch probe.EventType(e.Type) {
	case probe.TypeState:
		if e.Oldstate <= uint8(probe.MaxState) && e.Newstate <= uint8(probe.MaxState) {
			m.transitions[e.Oldstate][e.Newstate].Add(1)
		}
		// Opened: the first transition of a connection's life (a
		// listener's is no connection's).
		switch lifecycle.OpeningRole(e.OldState(), e.NewState()) {
		case lifecycle.RoleActive:
			m.countOpened(e, "active", md, withMeta)
		case lifecycle.RolePassive:
			m.countOpened(e, "passive", md, withMeta)
		}
	case probe.TypeResetSent:
		m.resets[resetSent].Add(1)
	case probe.TypeResetReceived:
		m.resets[resetReceived].Add(1)
	case probe.TypeSynRetransmit:
		m.synRetrans.Add(1)
	}
}

func (m *Metrics) countOpened(e *probe.Event, role string, md *metadata.Meta, withMeta bool) {
	m.mu.Lock()
	k := labelKey{role: role}
	if len(m.budgets) == 0 {
		i := roleSeriesActive
		if role == "passive" {
			i = roleSeriesPassive
		}
		*plainCounter(&m.plainOpened[i], m.opened, k)++
		m.mu.Unlock()
		return
	}
	var port uint16
	if role == "passive" {
		port = e.Sport
	}
	var comm []byte
	container := ""
	if e.OwnerKnown() {
		comm = e.CommBytes()
		if !withMeta && m.opts.ContainerOf != nil {
			container = m.opts.ContainerOf(e.CgroupId)
		}
	}
	k.opt = m.optionalValues(port, comm, container, md)
	*seriesCounter(m.opened, k)++
	m.mu.Unlock()
}

// optionalValues fills the optional labels in their configured order:
// port 0 is none, container the cgroup's runtime:id ("": md's), md what
// the runtime said of it (nil: nothing); call with mu held.
func (m *Metrics) optionalValues(port uint16, comm []byte, container string, md *metadata.Meta) [maxOptional]string {
	var out [maxOptional]string
	for i, l := range m.opts.Labels {
		b := m.budgets[l]
		switch l {
		case LabelPort:
			if port != 0 {
				out[i] = b.value(strconv.Itoa(int(port)))
			}
		case LabelComm:
			out[i] = b.valueBytes(comm)
		case LabelContainer:
			switch {
			case md != nil && md.Name != "":
				out[i] = b.value(md.Name)
			case container == "" && md != nil:
				var buf [96]byte
				out[i] = b.valueBytes(append(append(append(buf[:0], md.Runtime...), ':'), md.ID...))
			default:
				out[i] = b.value(container)
			}
		case LabelNamespace:
			if md != nil {
				out[i] = b.value(md.Pod.Namespace)
			}
		case LabelPod:
			if md != nil {
				out[i] = b.value(md.Pod.Name)
			}
		case LabelWorkload:
			if md != nil && md.Pod.Workload.Kind != "" {
				out[i] = b.workload(&md.Pod.Workload)
			}
		}
	}
	return out
}

func (m *Metrics) recordLabels(r *lifecycle.Record) [maxOptional]string {
	if len(m.budgets) == 0 {
		return [maxOptional]string{}
	}
	var port uint16
	if r.Role == lifecycle.RolePassive {
		port = r.Lport
	}
	var comm []byte
	if r.OwnerKnown() {
		comm = r.CommBytes()
	}
	return m.optionalValues(port, comm, r.Container, r.Meta)
}

// Closed counts a connection's close.
func (m *Metrics) Closed(r *lifecycle.Record) {
	if r.Role == lifecycle.RoleListener {
		return
	}
	role := r.Role.String()
	m.mu.Lock()
	opt := m.recordLabels(r)
	m.countClosed(r, role, &opt)
	if r.Role == lifecycle.RoleActive {
		switch r.Kind {
		case lifecycle.KindRefused:
			m.countFailure(failRefused, &opt)
		case lifecycle.KindConnectTimeout:
			m.countFailure(failTimeout, &opt)
		case lifecycle.KindAbortedHandshake:
			m.countFailure(failOther, &opt)
		case lifecycle.KindResetReceived:
			if r.HandshakeNs == 0 {
				m.countFailure(failReset, &opt)
			}
		}
	}
	m.bytesSent += r.TxBytes
	m.bytesRecv += r.RxBytes
	if !r.OwnerKnown() {
		m.attributionMisses++
	}
	m.mu.Unlock()

	now := m.exemplarClock()
	m.closedNow.Store(now)
	m.closedID.Store(r.ID)
	if r.HandshakeNs > 0 {
		o := m.roleObserver(m.handshake, &m.handshakeByRole, r.Role, role, &opt)
		m.observe(exemplarHandshake, o, float64(r.HandshakeNs)/1e9, r.ID, now)
	}
	if d := r.LifetimeNs(); d > 0 && r.LifetimeKnown() { // a partial record's is a lower bound
		o := m.roleObserver(m.lifetime, &m.lifetimeByRole, r.Role, role, &opt)
		m.observe(exemplarLifetime, o, float64(d)/1e9, r.ID, now)
	}
}

// countClosed counts a close in its series; call with mu held.
func (m *Metrics) countClosed(r *lifecycle.Record, role string, opt *[maxOptional]string) {
	k := labelKey{role: role, initiator: r.Initiator.String(), kind: r.Kind.String(), opt: *opt}
	if len(m.budgets) == 0 && r.Role < plainRoles && r.Initiator < plainInitiators && r.Kind < plainKinds {
		*plainCounter(&m.plainClosed[r.Role][r.Initiator][r.Kind], m.closed, k)++
		return
	}
	*seriesCounter(m.closed, k)++
}

// countFailure counts a connect failure; call with mu held.
func (m *Metrics) countFailure(reason int, opt *[maxOptional]string) {
	if len(m.budgets) == 0 {
		*m.plainFailures[reason]++
		return
	}
	*seriesCounter(m.failures, failureKey{reason, *opt})++
}

// roleObserver is a record's series of vec (handshake or lifetime): by
// role alone, looked up once (cache), when no optional label is on.
func (m *Metrics) roleObserver(vec *prometheus.HistogramVec, cache *[roleSeries]atomic.Pointer[prometheus.Observer],
	r lifecycle.Role, role string, opt *[maxOptional]string) prometheus.Observer {
	if len(m.opts.Labels) > 0 {
		values := make([]string, 0, 4)
		values = append(values, role)
		for i := range m.opts.Labels {
			values = append(values, opt[i])
		}
		return vec.WithLabelValues(values...)
	}
	switch r {
	case lifecycle.RoleActive:
		return cachedObserver(&cache[roleSeriesActive], vec, role)
	case lifecycle.RolePassive:
		return cachedObserver(&cache[roleSeriesPassive], vec, role)
	}
	return vec.WithLabelValues(role)
}

// cachedObserver is vec's series for one label value, looked up once: a
// vector's series is the same observer for as long as it exists, and
// these are never deleted. The series is made at its first observation,
// as WithLabelValues would.
func cachedObserver(slot *atomic.Pointer[prometheus.Observer], vec *prometheus.HistogramVec, value string) prometheus.Observer {
	if p := slot.Load(); p != nil {
		return *p
	}
	o := vec.WithLabelValues(value)
	slot.Store(&o)
	return o
}

// Finished records how long the connection spent in each state. It does
// not allocate.
func (m *Metrics) Finished(r *lifecycle.Record) {
	if r.Role == lifecycle.RoleListener {
		return
	}
	var now int64
	if m.closedID.Load() == r.ID {
		now = m.closedNow.Load() // just closed: the same moment
	}
	if now == 0 {
		now = m.exemplarClock()
	}
	for _, sp := range r.SpanList() {
		if sp.Enter == 0 || sp.Exit == 0 || sp.State > probe.MaxState {
			continue
		}
		o := cachedObserver(&m.stateObs[sp.State], m.stateDur, stateLabel[sp.State])
		m.observe(exemplarStateDuration, o, float64(sp.Dwell())/1e9, r.ID, now)
	}
}

// exemplarClock is the time the exemplar checks of one record compare
// with, read once per record; 0 when exemplars are off.
func (m *Metrics) exemplarClock() int64 {
	if m.opts.NoExemplars {
		return 0
	}
	return time.Now().UnixNano()
}

// observe records a duration, with an exemplar naming the connection at
// most once a second per histogram: enough to jump from a dashboard to a
// log record, without an allocation per connection.
func (m *Metrics) observe(h int, o prometheus.Observer, v float64, id uint64, now int64) {
	if !m.opts.NoExemplars {
		last := m.lastExemplar[h].Load()
		if now-last > int64(time.Second) && m.lastExemplar[h].CompareAndSwap(last, now) {
			if eo, ok := o.(prometheus.ExemplarObserver); ok {
				eo.ObserveWithExemplar(v, prometheus.Labels{"conn_id": strconv.FormatUint(id, 10)})
				return
			}
		}
	}
	o.Observe(v)
}
