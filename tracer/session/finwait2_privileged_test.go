package session_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/internal/testkit/scenario"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

// Orphans whose peer is out of the trace (another namespace, over veth):
// what sock_diag's time-wait polls told the live session is in its
// recording, and the replay gives the live records exactly. One holder
// closes after a second (its orphans enter TIME_WAIT), the other never
// does (its orphans die of the namespace's 2 s tcp_fin_timeout).
// finTimeoutSeen is the 2 s tcp_fin_timeout as the records can show it:
// the death is read off sock_diag's timer, in whole milliseconds of
// jiffies, so it may land up to a few ms before the 2 s
// (nettest.DumpTimerSlack).
var finTimeoutSeen = uint64(2*time.Second - nettest.DumpTimerSlack())

func TestFinWait2RecordedPollsReplay(t *testing.T) {
	nettest.RequireBPF(t)
	clientNS, serverNS := nettest.NewNS(t), nettest.NewNS(t)
	clientNS.Veth(t, serverNS, "fw2c", "10.252.0.1/30", "fw2s", "10.252.0.2/30")
	if err := clientNS.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/tcp_fin_timeout", []byte("2"), 0)
	}); err != nil {
		t.Fatal(err)
	}
	var rec bytes.Buffer
	w, err := recording.NewWriter(&rec, recording.Header{EventSize: uint16(probe.EventSize)})
	if err != nil {
		t.Fatal(err)
	}
	l := startSession(t, clientNS, session.Options{Record: w, TimeWaitPoll: 200 * time.Millisecond})

	const n = 4
	hold := func(comm string) (*nettest.Peer, int) {
		h := serverNS.StartHelper(t, nettest.Helper{Comm: comm, Role: "holder", Network: "tcp4", Addr: "10.252.0.2:0", Send: n})
		port := h.Port(t)
		var conns []*net.TCPConn
		for i := 0; i < n; i++ {
			c, err := clientNS.Dial("tcp4", "10.252.0.2:"+strconv.Itoa(port))
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		if line := h.Line(t); line != fmt.Sprintf("accepted %d", n) {
			t.Fatalf("holder: %q", line)
		}
		for _, c := range conns {
			c.Close()
		}
		return h, port
	}
	closer, closerPort := hold("fw2closer")
	_, keeperPort := hold("fw2keeper")
	time.Sleep(time.Second)
	closer.Release(t)
	closer.Done(t)
	// The closer's orphans in TIME_WAIT, the keeper's dead.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var tw, fw2 int
		l.s.With(func(b *lifecycle.Builder) {
			tw, fw2 = b.StateCount(probe.StateTimeWait), b.StateCount(probe.StateFinWait2)
		})
		closed, _ := l.col.get()
		if tw == n && fw2 == 0 && len(connections(closed)) == 2*n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TIME_WAIT %d, FIN_WAIT2 %d, closed %d; want %d, 0, %d", tw, fw2, len(connections(closed)), n, 2*n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := l.s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := <-l.done; err != nil {
		t.Fatal(err)
	}
	l.done <- nil // for the cleanup
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	_, live := l.col.get()
	kinds := map[string]int{}
	for i := range live {
		r := &live[i]
		switch {
		case r.Role != lifecycle.RoleActive:
		case int(r.Rport) == closerPort && r.Kind == lifecycle.KindGraceful && r.TimeWait == lifecycle.TWPending:
			kinds["entered TIME_WAIT"]++
		case int(r.Rport) == keeperPort && r.Kind == lifecycle.KindFinWait2Timeout && r.TimeWait == lifecycle.TWNone &&
			r.Spans[r.NSpan-1].State == probe.StateFinWait2 && r.Spans[r.NSpan-1].Dwell() >= finTimeoutSeen:
			kinds["died in FIN_WAIT2"]++
		default:
			t.Errorf("live record %s spans %+v", scenario.Describe(r), r.Spans[:r.NSpan])
		}
	}
	if kinds["entered TIME_WAIT"] != n || kinds["died in FIN_WAIT2"] != n {
		t.Errorf("live records %v, want %d of each", kinds, n)
	}

	rd, err := recording.NewReader(bytes.NewReader(rec.Bytes()), probe.EventSize)
	if err != nil {
		t.Fatal(err)
	}
	col := &collector{}
	if _, err := session.Replay(rd, session.ReplayOptions{Handler: col}); err != nil {
		t.Fatal(err)
	}
	_, replayed := col.get()
	if len(replayed) != len(live) {
		t.Fatalf("replay: %d records, live %d", len(replayed), len(live))
	}
	for i := range live {
		if replayed[i] != live[i] {
			t.Errorf("record %d differs:\nreplay %s\nlive   %s", i, scenario.Describe(&replayed[i]), scenario.Describe(&live[i]))
		}
	}
}
