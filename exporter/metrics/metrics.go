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
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Label names the optional labels.
type Label string

const (
	LabelPort      Label = "port"      // the local listening port of an accepted connection
	LabelComm      Label = "comm"      // the owner's command name
	LabelContainer Label = "container" // the owner's container (runtime:id)
)

// ParseLabel validates an optional label name.
func ParseLabel(s string) (Label, bool) {
	switch l := Label(s); l {
	case LabelPort, LabelComm, LabelContainer:
		return l, true
	}
	return "", false
}

// Options choose the optional labels. Each has a budget of distinct
// values; values beyond it are counted under "other".
type Options struct {
	Labels     []Label
	LabelLimit int // default DefaultLabelLimit
	// ContainerOf names the container of a cgroup id ("" for none); needed
	// for the container label on connections still open.
	ContainerOf func(cgroupID uint64) string
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

	mu                   sync.Mutex
	opened               map[labelKey]uint64
	closed               map[labelKey]uint64
	failures             [failureReasons]uint64
	bytesSent, bytesRecv uint64
	attributionMisses    uint64
	budgets              map[Label]*budget

	handshake, lifetime, stateDur *prometheus.HistogramVec
	lastExemplar                  [exemplarHistograms]atomic.Int64 // unix ns of each histogram's last exemplar

	descs descs
}

// labelKey is a counter's label values, fixed and optional.
type labelKey struct {
	role, initiator, kind string
	opt                   [3]string
}

// The histograms that carry exemplars, indexing lastExemplar.
const (
	exemplarHandshake = iota
	exemplarLifetime
	exemplarStateDuration
	exemplarHistograms // how many there are
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
		opened: map[labelKey]uint64{}, closed: map[labelKey]uint64{}, budgets: map[Label]*budget{}}
	for _, l := range opts.Labels {
		m.budgets[l] = &budget{limit: opts.LabelLimit, values: map[string]struct{}{}}
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
	values map[string]struct{}
}

func (b *budget) value(v string) string {
	if v == "" {
		return ""
	}
	if _, ok := b.values[v]; ok {
		return v
	}
	if len(b.values) < b.limit {
		b.values[v] = struct{}{}
		return v
	}
	return "other"
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
func (m *Metrics) Event(e *probe.Event) {
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
			m.countOpened(e, "active")
		case lifecycle.RolePassive:
			m.countOpened(e, "passive")
		}
	case probe.TypeResetSent:
		m.resets[resetSent].Add(1)
	case probe.TypeResetReceived:
		m.resets[resetReceived].Add(1)
	case probe.TypeSynRetransmit:
		m.synRetrans.Add(1)
	}
}

func (m *Metrics) countOpened(e *probe.Event, role string) {
	m.mu.Lock()
	k := labelKey{role: role}
	if len(m.budgets) > 0 {
		port := ""
		if role == "passive" {
			port = strconv.Itoa(int(e.Sport))
		}
		container := ""
		if m.opts.ContainerOf != nil && e.OwnerKnown() {
			container = m.opts.ContainerOf(e.CgroupId)
		}
		comm := ""
		if e.OwnerKnown() {
			comm = string(e.CommBytes())
		}
		k.opt = m.optionalValues(port, comm, container)
	}
	m.opened[k]++
	m.mu.Unlock()
}

// optionalValues fills the optional labels in their configured order;
// call with mu held.
func (m *Metrics) optionalValues(port, comm, container string) [3]string {
	var out [3]string
	for i, l := range m.opts.Labels {
		v := ""
		switch l {
		case LabelPort:
			v = port
		case LabelComm:
			v = comm
		case LabelContainer:
			v = container
		}
		out[i] = m.budgets[l].value(v)
	}
	return out
}

func (m *Metrics) recordLabels(r *lifecycle.Record) [3]string {
	if len(m.budgets) == 0 {
		return [3]string{}
	}
	port := ""
	if r.Role == lifecycle.RolePassive {
		port = strconv.Itoa(int(r.Lport))
	}
	comm := ""
	if r.OwnerKnown() {
		comm = string(r.CommBytes())
	}
	return m.optionalValues(port, comm, r.Container)
}

// Closed counts a connection's close.
func (m *Metrics) Closed(r *lifecycle.Record) {
	if r.Role == lifecycle.RoleListener {
		return
	}
	role := r.Role.String()
	m.mu.Lock()
	opt := m.recordLabels(r)
	m.closed[labelKey{role: role, initiator: r.Initiator.String(), kind: r.Kind.String(), opt: opt}]++
	if r.Role == lifecycle.RoleActive {
		switch r.Kind {
		case lifecycle.KindRefused:
			m.failures[failRefused]++
		case lifecycle.KindConnectTimeout:
			m.failures[failTimeout]++
		case lifecycle.KindAbortedHandshake:
			m.failures[failOther]++
		case lifecycle.KindResetReceived:
			if r.HandshakeNs == 0 {
				m.failures[failReset]++
			}
		}
	}
	m.bytesSent += r.TxBytes
	m.bytesRecv += r.RxBytes
	if !r.OwnerKnown() {
		m.attributionMisses++
	}
	m.mu.Unlock()

	values := make([]string, 0, 4)
	values = append(values, role)
	for i := range m.opts.Labels {
		values = append(values, opt[i])
	}
	if r.HandshakeNs > 0 {
		m.observe(exemplarHandshake, m.handshake.WithLabelValues(values...), float64(r.HandshakeNs)/1e9, r.ID)
	}
	if d := r.LifetimeNs(); d > 0 {
		m.observe(exemplarLifetime, m.lifetime.WithLabelValues(values...), float64(d)/1e9, r.ID)
	}
}

// Finished counts the time spent in each state, TIME_WAIT included.
func (m *Metrics) Finished(r *lifecycle.Record) {
	if r.Role == lifecycle.RoleListener {
		return
	}
	for _, sp := range r.SpanList() {
		if sp.Enter == 0 || sp.Exit == 0 || sp.State > probe.MaxState {
			continue
		}
		m.observe(exemplarStateDuration, m.stateDur.WithLabelValues(stateLabel[sp.State]), float64(sp.Dwell())/1e9, r.ID)
	}
}

// observe records a duration, with an exemplar naming the connection at
// most once a second per histogram: enough to jump from a dashboard to a
// log record, without an allocation per connection.
func (m *Metrics) observe(h int, o prometheus.Observer, v float64, id uint64) {
	if !m.opts.NoExemplars {
		now := time.Now().UnixNano()
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
