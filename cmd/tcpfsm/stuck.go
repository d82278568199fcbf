package main

import (
	"strings"
	"time"

	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/settings"
	"github.com/tcpfsm/tcpfsm/exporter/connview"
)

// stuckSettings are the thresholds past which a connection in a state
// counts as stuck, one per watched state: the agent's stuck.* keys (its
// gauges, its API's stuck flag) and top's highlighting.
func stuckSettings(th *connview.Thresholds) []settings.Setting {
	*th = connview.DefaultThresholds()
	var out []settings.Setting
	for _, st := range connview.WatchedStates {
		name := strings.ToLower(st.String())
		def := th[st]
		out = append(out, &settings.Duration{Spec: settings.Spec{Key: "stuck." + name, Flag: "stuck." + strings.ReplaceAll(name, "_", "-"),
			Help: "a connection in " + st.String() + " longer than this `DURATION` is stuck (0: never)",
			Doc:  "A connection in " + st.String() + " for longer than this is stuck; 0: " + st.String() + " is not watched."},
			Default: def, Min: 100 * time.Millisecond, Max: connview.MaxThreshold, Zero: "off",
			To: func(v time.Duration) error { th[st] = v; return nil }})
	}
	return out
}

// The example configuration's comment on the stuck section.
const stuckSectionDoc = `When a connection counts as stuck in a state: tcpfsm_connections_stuck
	and tcpfsm_oldest_connection_age_seconds (with the optional labels of metrics.labels), the
	connections API (/api/v1/connections?stuck=true) and tcpfsm top. A connection older than the
	agent, whose entry into its state is unknown, counts once the time since it was first seen
	passes the threshold.`
