package metrics

import "github.com/tcpfsm/tcpfsm/exporter/connview"

// Totals are the counters a summary shows (tcpfsm top's rates): opened
// and closed connections over every label, resets both ways, and connect
// failures of every reason, as the counters say them.
func (m *Metrics) Totals() connview.Totals {
	t := connview.Totals{Resets: m.resets[resetSent].Load() + m.resets[resetReceived].Load()}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, v := range m.opened {
		t.Opened += *v
	}
	for _, v := range m.closed {
		t.Closed += *v
	}
	for _, v := range m.failures {
		t.ConnectFailures += *v
	}
	return t
}
