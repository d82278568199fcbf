package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func family(t *testing.T, reg *prometheus.Registry, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

func matches(m *dto.Metric, labels map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := labels[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(labels)
}

// counterOf returns a counter series as a collector for testutil.ToFloat64.
func counterOf(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) prometheus.Collector {
	t.Helper()
	v := 0.0
	if mf := family(t, reg, name); mf != nil {
		for _, m := range mf.GetMetric() {
			if matches(m, labels) {
				v = m.GetCounter().GetValue()
			}
		}
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	c.Add(v)
	return c
}

func histCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	var n uint64
	if mf := family(t, reg, name); mf != nil {
		for _, m := range mf.GetMetric() {
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}

func findHist(t *testing.T, reg *prometheus.Registry, name, label, value string) *dto.Histogram {
	t.Helper()
	if mf := family(t, reg, name); mf != nil {
		for _, m := range mf.GetMetric() {
			if matches(m, map[string]string{label: value}) {
				return m.GetHistogram()
			}
		}
	}
	return nil
}
