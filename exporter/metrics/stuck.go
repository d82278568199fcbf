package metrics

import (
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcpfsm/tcpfsm/exporter/connview"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// StuckCollector makes the stuck-connection gauges at each scrape, from
// the open connections (connview.Stuck):
//
//	tcpfsm_connections_stuck{state}               past the state's threshold
//	tcpfsm_oldest_connection_age_seconds{state}   the longest time one has been in it
//
// one series per watched state, and with the optional labels of the
// connection metrics, inside the same budgets.
type StuckCollector struct {
	m     *Metrics
	th    connview.Thresholds
	with  func(func(*lifecycle.Builder))
	now   func() uint64
	by    connview.GroupBy
	descs struct{ stuck, oldest *prometheus.Desc }

	mu sync.Mutex // one scrape counts at a time
	s  connview.Stuck
}

// NewStuck returns the collector of m's optional labels; with runs its
// argument with the builder locked, now is the monotonic clock.
func NewStuck(m *Metrics, th connview.Thresholds, with func(func(*lifecycle.Builder)), now func() uint64) *StuckCollector {
	c := &StuckCollector{m: m, th: th, with: with, now: now}
	for _, l := range m.opts.Labels {
		switch l {
		case LabelPort:
			c.by.Port = true
		case LabelComm:
			c.by.Comm = true
		case LabelContainer, LabelNamespace, LabelPod, LabelWorkload:
			// By container: its metadata names the pod.
			c.by.Container = true
		}
	}
	labels := append([]string{"state"}, m.optionalNames()...)
	c.descs.stuck = prometheus.NewDesc("tcpfsm_connections_stuck",
		"Open connections in a state for longer than its threshold (the agent's stuck.* settings). A connection older "+
			"than the agent counts once the time since it was first seen passes the threshold.", labels, nil)
	c.descs.oldest = prometheus.NewDesc("tcpfsm_oldest_connection_age_seconds",
		"Longest time an open connection has been in each watched state, 0 when none is; for a connection older than the "+
			"agent, the time since it was first seen (a lower bound).", labels, nil)
	return c
}

// Describe sends both descriptors.
func (c *StuckCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.descs.stuck
	ch <- c.descs.oldest
}

type stuckSeries struct {
	state probe.State
	opt   [maxOptional]string
}

type stuckValue struct {
	stuck    int
	oldestNs uint64
}

// Collect counts the open connections and sends the gauges.
func (c *StuckCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	c.with(func(b *lifecycle.Builder) { c.s.Count(b, &c.th, c.by, c.now()) })
	groups := c.s.Groups()
	c.mu.Unlock()

	// Owners beyond a label's budget share "other": merge their groups.
	series := map[stuckSeries]*stuckValue{}
	var order []stuckSeries
	m := c.m
	m.mu.Lock()
	for _, g := range groups {
		k := stuckSeries{state: g.State}
		if len(m.budgets) > 0 {
			port, _ := strconv.Atoi(g.Port)
			k.opt = m.optionalValues(uint16(port), []byte(g.Comm), g.Container, m.containerMeta(g.Container))
		}
		v := series[k]
		if v == nil {
			v = &stuckValue{}
			series[k] = v
			order = append(order, k)
		}
		v.stuck += g.Stuck
		v.oldestNs = max(v.oldestNs, g.OldestNs)
	}
	m.mu.Unlock()

	n := len(m.opts.Labels)
	for _, k := range order {
		v := series[k]
		labels := append([]string{stateLabel[k.state]}, k.opt[:n]...)
		ch <- prometheus.MustNewConstMetric(c.descs.stuck, prometheus.GaugeValue, float64(v.stuck), labels...)
		ch <- prometheus.MustNewConstMetric(c.descs.oldest, prometheus.GaugeValue, float64(v.oldestNs)/1e9, labels...)
	}
}

// containerMeta is what Options.Names says of a container ("runtime:id"),
// nil when nothing.
func (m *Metrics) containerMeta(container string) *metadata.Meta {
	if m.opts.Names == nil || container == "" {
		return nil
	}
	rt, id, _ := strings.Cut(container, ":")
	if md, ok := m.opts.Names(metadata.Key{Runtime: rt, ID: id}); ok {
		return &md
	}
	return nil
}
