package text

import (
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// keep collects the records a builder hands out, by id.
type keep map[uint64]lifecycle.Record

func (k keep) Closed(r *lifecycle.Record)   { k[r.ID] = *r }
func (k keep) Finished(r *lifecycle.Record) { k[r.ID] = *r }

// orphanEv is an event of the client (odd id, 127.0.0.1:40000 -> :80) or
// of the server (even id) at ms.
func orphanEv(id uint64, ms uint64, old, nw probe.State, flags uint8) probe.Event {
	e := probe.Event{Type: uint8(probe.TypeState), ConnId: id, TsNs: 1_000_000_000 + ms*1_000_000,
		Oldstate: uint8(old), Newstate: uint8(nw), Family: probe.AFInet, Netns: 7, Sport: 40000, Dport: 80, Flags: flags}
	copy(e.Saddr[:], []byte{127, 0, 0, 1})
	copy(e.Daddr[:], []byte{127, 0, 0, 1})
	if id%2 == 0 {
		e.Sport, e.Dport = 80, 40000
	}
	return e
}

// The client closes at 10 ms; the server holds the connection for 2 s,
// then closes: the client's end is an orphan in FIN_WAIT2 until the
// server's FIN, and only then in TIME_WAIT. The ladder draws the FIN
// before TIME_WAIT and its ACK, even at the same instant.
func TestLadderOrphanWaitsForThePeersFin(t *testing.T) {
	k := keep{}
	b := lifecycle.NewBuilder(lifecycle.Config{}, k)
	const (
		CLOSE, SS, SR, EST = probe.StateClose, probe.StateSynSent, probe.StateSynRecv, probe.StateEstablished
		FW1, FW2, CW, LA   = probe.StateFinWait1, probe.StateFinWait2, probe.StateCloseWait, probe.StateLastAck
		LST                = probe.StateListen
	)
	for _, e := range []probe.Event{
		orphanEv(1, 0, CLOSE, SS, 0), orphanEv(2, 0, LST, SR, 0), orphanEv(1, 1, SS, EST, probe.FlagSynAcked),
		orphanEv(2, 1, SR, EST, 0),
		orphanEv(1, 10, EST, FW1, 0), orphanEv(2, 10, EST, CW, probe.FlagFinReceived),
		orphanEv(1, 11, FW1, FW2, probe.FlagFinAcked), orphanEv(1, 11, FW2, CLOSE, probe.FlagFinAcked),
		orphanEv(2, 2011, CW, LA, probe.FlagFinReceived), orphanEv(2, 2012, LA, CLOSE, probe.FlagFinReceived|probe.FlagFinAcked),
	} {
		b.Event(&e)
	}
	b.Tick(1_000_000_000 + 2100*1_000_000)
	b.Flush()
	client, server := k[1], k[2]
	got := string(AppendLadder(nil, &client, &server))
	want := `connection 127.0.0.1:40000 <-> 127.0.0.1:80: graceful, closed by left
          ms  active 127.0.0.1:40000                     passive 127.0.0.1:80
       0.000  SYN_SENT     ──────────── SYN ───────────▶
       0.000                                             SYN_RECV
       1.000  ESTABLISHED  ◀───────── SYN,ACK ──────────
                           ──────────── ACK ───────────▶
       1.000                                             ESTABLISHED
      10.000  FIN_WAIT1    ──────────── FIN ───────────▶
      10.000               ◀─────────── ACK ──────────── CLOSE_WAIT
      11.000  FIN_WAIT2
    2011.000               ◀─────────── FIN ──────────── LAST_ACK
    2011.000  TIME_WAIT    ──────────── ACK ───────────▶
    2012.000                                             CLOSED
`
	if !strings.HasPrefix(got, want) {
		t.Errorf("ladder:\n%s\nwant it to start:\n%s", got, want)
	}
	if fw2 := client.Spans[3]; fw2.State != FW2 || fw2.Dwell() != 2000*1_000_000 {
		t.Errorf("FIN_WAIT2 %s for %d ns, want 2 s", fw2.State, fw2.Dwell())
	}
}

// An orphan whose peer never closes dies in FIN_WAIT2: its ladder ends
// there, with no TIME_WAIT and no segment.
func TestLadderOrphanTimesOut(t *testing.T) {
	k := keep{}
	b := lifecycle.NewBuilder(lifecycle.Config{}, k)
	b.FinTimeout(7, 5_000_000_000)
	for _, e := range []probe.Event{
		orphanEv(1, 0, probe.StateClose, probe.StateSynSent, 0),
		orphanEv(2, 0, probe.StateListen, probe.StateSynRecv, 0),
		orphanEv(1, 1, probe.StateSynSent, probe.StateEstablished, probe.FlagSynAcked),
		orphanEv(2, 1, probe.StateSynRecv, probe.StateEstablished, 0),
		orphanEv(1, 10, probe.StateEstablished, probe.StateFinWait1, 0),
		orphanEv(2, 10, probe.StateEstablished, probe.StateCloseWait, probe.FlagFinReceived),
		orphanEv(1, 11, probe.StateFinWait1, probe.StateFinWait2, probe.FlagFinAcked),
		orphanEv(1, 11, probe.StateFinWait2, probe.StateClose, probe.FlagFinAcked),
	} {
		b.Event(&e)
	}
	b.Tick(1_000_000_000 + 8000*1_000_000)
	b.Flush()
	client, server := k[1], k[2]
	if client.Kind != lifecycle.KindFinWait2Timeout || client.TimeWait != lifecycle.TWNone || server.Kind != lifecycle.KindOpen {
		t.Fatalf("client %s (TIME_WAIT %s), server %s", client.Kind, client.TimeWait, server.Kind)
	}
	got := string(AppendLadder(nil, &client, &server))
	tail := `      11.000  FIN_WAIT2
    5011.000  CLOSED
`
	if !strings.Contains(got, tail) || strings.Contains(got, "TIME_WAIT") ||
		!strings.HasPrefix(got, "connection 127.0.0.1:40000 <-> 127.0.0.1:80: fin_wait2_timeout, closed by left\n") {
		t.Errorf("ladder:\n%s\nwant it to end:\n%s", got, tail)
	}
}
