package metrics_test

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/tcpfsm/tcpfsm/exporter/metrics"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

var update = flag.Bool("update", false, "rewrite testdata/exposition-*.txt from the current code")

// The metrics of every scenario recording and of a churn of many
// connections are, in the text exposition, what the golden files say:
// written by the code before the event and record paths were made
// cheaper (counters in arrays, one clock per record), so any change to
// a value or series shows here.
func TestExpositionGolden(t *testing.T) {
	recs, err := filepath.Glob("../../tracer/testdata/scenarios/*.rec")
	if err != nil || len(recs) == 0 {
		t.Fatalf("no recordings: %v", err)
	}
	for _, tc := range []struct {
		name   string
		labels []metrics.Label
	}{
		{"plain", nil},
		{"labels", []metrics.Label{metrics.LabelPort, metrics.LabelComm, metrics.LabelContainer}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := metrics.New(metrics.Options{Labels: tc.labels, NoExemplars: true,
				ContainerOf: func(id uint64) string {
					if id%2 == 1 {
						return "containerd:abc"
					}
					return ""
				}}, metrics.BuildInfo{}, func() metrics.Snapshot { return metrics.Snapshot{} })
			for _, path := range recs {
				replay(t, path, m)
			}
			churn(m, 3000)
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(m)
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			enc := expfmt.NewEncoder(&got, expfmt.NewFormat(expfmt.TypeTextPlain))
			for _, mf := range mfs {
				if err := enc.Encode(mf); err != nil {
					t.Fatal(err)
				}
			}
			golden := filepath.Join("testdata", "exposition-"+tc.name+".txt")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("exposition differs from %s:\n%s", golden, got.Bytes())
			}
		})
	}
}

func replay(t *testing.T, path string, m *metrics.Metrics) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd, err := recording.NewReader(f, probe.EventSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := session.Replay(rd, session.ReplayOptions{Handler: m, OnEvent: m.Event}); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// churn feeds n loopback connections of varied ends: RST and FIN
// closes, refused and reset connects, each way.
func churn(m *metrics.Metrics, n int) {
	b := lifecycle.NewBuilder(lifecycle.Config{}, m)
	ts := uint64(1e9)
	lo := netip.MustParseAddr("127.0.0.1").As4()
	feed := func(e probe.Event) {
		ts += 10_000 + e.ConnId%7*1_000
		e.TsNs = ts
		m.Event(&e)
		b.Event(&e)
	}
	st := func(e probe.Event, from, to probe.State) probe.Event {
		e.Type, e.Oldstate, e.Newstate = uint8(probe.TypeState), uint8(from), uint8(to)
		return e
	}
	for i := 0; i < n; i++ {
		c := probe.Event{Family: probe.AFInet, Netns: 1, Pid: 10, Tid: 10, CgroupId: uint64(i % 3),
			ConnId: uint64(2*i+2) << 12, Sport: uint16(30000 + i), Dport: 8080, Owner: uint8(probe.OwnerTask)}
		copy(c.Saddr[:], lo[:])
		copy(c.Daddr[:], lo[:])
		copy(c.Comm[:], []string{"curl", "wget", "nc"}[i%3])
		s := c
		s.ConnId, s.Sport, s.Dport, s.Owner = uint64(2*i+3)<<12, 8080+uint16(i%2), c.Sport, uint8(probe.OwnerListener)
		switch i % 4 {
		case 0, 1: // RST by the client, or a graceful close by the server
			feed(st(c, probe.StateClose, probe.StateSynSent))
			feed(st(s, probe.StateListen, probe.StateSynRecv))
			feed(st(s, probe.StateSynRecv, probe.StateEstablished))
			feed(st(c, probe.StateSynSent, probe.StateEstablished))
			if i%4 == 0 {
				feed(st(c, probe.StateEstablished, probe.StateClose))
				r := c
				r.Type = uint8(probe.TypeResetSent)
				feed(r)
				r = s
				r.Type = uint8(probe.TypeResetReceived)
				feed(r)
				feed(st(s, probe.StateEstablished, probe.StateClose))
			} else {
				feed(st(s, probe.StateEstablished, probe.StateFinWait1))
				feed(st(c, probe.StateEstablished, probe.StateCloseWait))
				feed(st(s, probe.StateFinWait1, probe.StateFinWait2))
				feed(st(c, probe.StateCloseWait, probe.StateLastAck))
				feed(st(s, probe.StateFinWait2, probe.StateTimeWait))
				feed(st(c, probe.StateLastAck, probe.StateClose))
			}
		case 2: // refused
			feed(st(c, probe.StateClose, probe.StateSynSent))
			c.SkErr = 111
			r := c
			r.Type = uint8(probe.TypeResetReceived)
			feed(r)
			feed(st(c, probe.StateSynSent, probe.StateClose))
		case 3: // a SYN retransmitted, then given up
			feed(st(c, probe.StateClose, probe.StateSynSent))
			r := c
			r.Type = uint8(probe.TypeSynRetransmit)
			feed(r)
			c.SkErr = 110
			feed(st(c, probe.StateSynSent, probe.StateClose))
		}
		if i%500 == 0 {
			b.Tick(ts)
		}
	}
	b.Flush()
}
