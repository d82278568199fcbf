package text

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"

	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// The ladder: both ends of a connection side by side, every state change
// at its real time offset, and between them the segments those changes
// imply, as TCP textbooks draw the handshake and the four-way close.

const (
	ladderTime  = 12
	ladderState = 12
	ladderWire  = 29
)

// ladderRow is a state change of one end, with the segments it sent or
// received.
type ladderRow struct {
	at    uint64
	right bool
	state string
	wires []wire
}

func tieRank(r ladderRow) int {
	if r.state == "TIME_WAIT" {
		return 1
	}
	return 0
}

type wire struct {
	label     string
	rightward bool
}

// Pair says whether two records are the two ends of one connection: each
// one's local endpoint is the other's remote endpoint.
func Pair(a, b *lifecycle.Record) bool {
	return a.Family == b.Family && a.Lport == b.Rport && a.Rport == b.Lport &&
		a.Laddr == b.Raddr && a.Raddr == b.Laddr && a.Role != lifecycle.RoleListener &&
		b.Role != lifecycle.RoleListener && a.ID != b.ID
}

// AppendLadder draws the ladder of two paired records. The active end,
// when there is one, goes on the left.
func AppendLadder(b []byte, x, y *lifecycle.Record) []byte {
	left, right := x, y
	if right.Role == lifecycle.RoleActive && left.Role != lifecycle.RoleActive {
		left, right = right, left
	}
	rows := append(ladderRows(left, right, false), ladderRows(right, left, true)...)
	slices.SortStableFunc(rows, func(p, q ladderRow) int {
		switch {
		case p.at < q.at:
			return -1
		case p.at > q.at:
			return 1
		}
		// An orphan enters TIME_WAIT as its peer sends the FIN (the
		// builder knows no later time): the FIN is drawn first.
		return cmp.Compare(tieRank(p), tieRank(q))
	})
	var t0 uint64
	if len(rows) > 0 {
		t0 = rows[0].at
	}

	b = append(b, "connection "...)
	b = netip.AddrPortFrom(left.LocalAddr(), left.Lport).AppendTo(b)
	b = append(b, " <-> "...)
	b = netip.AddrPortFrom(right.LocalAddr(), right.Lport).AppendTo(b)
	b = append(b, ": "...)
	kind := left.Kind
	if right.Kind == lifecycle.KindSimultaneous {
		kind = right.Kind
	}
	b = append(b, kind.String()...)
	b = append(b, ", closed by "...)
	switch left.Initiator {
	case lifecycle.InitiatorLocal:
		b = append(b, "left"...)
	case lifecycle.InitiatorRemote:
		b = append(b, "right"...)
	default:
		b = append(b, left.Initiator.String()...)
	}
	b = append(b, '\n')
	b = ladderHeader(b, left, right)
	for _, r := range rows {
		b = ladderLine(b, r, t0)
	}
	return append(b, '\n')
}

func ladderHeader(b []byte, l, r *lifecycle.Record) []byte {
	side := func(b []byte, rec *lifecycle.Record) []byte {
		b = append(b, rec.Role.String()...)
		b = append(b, ' ')
		b = netip.AddrPortFrom(rec.LocalAddr(), rec.Lport).AppendTo(b)
		if rec.OwnerKnown() {
			b = append(b, " ("...)
			b = appendPrintable(b, rec.CommBytes())
			b = append(b, ' ')
			b = strconv.AppendUint(b, uint64(rec.Pid), 10)
			b = append(b, ')')
		}
		return b
	}
	b = padLeft(b, "ms", ladderTime)
	b = append(b, "  "...)
	start := len(b)
	b = side(b, l)
	for n := len(b) - start; n < ladderState+ladderWire+1; n++ {
		b = append(b, ' ')
	}
	b = append(b, ' ')
	b = side(b, r)
	return append(b, '\n')
}

func ladderLine(b []byte, r ladderRow, t0 uint64) []byte {
	var num [32]byte
	wires := r.wires
	if len(wires) == 0 {
		wires = []wire{{}}
	}
	for i, w := range wires {
		if i == 0 {
			b = padLeft(b, strconv.AppendFloat(num[:0], float64(r.at-t0)/1e6, 'f', 3, 64), ladderTime)
		} else {
			b = padLeft(b, "", ladderTime)
		}
		b = append(b, "  "...)
		name := ""
		if i == 0 && !r.right {
			name = r.state
		}
		b = pad(append(b, name...), len(name), ladderState)
		b = appendWire(b, w)
		if i == 0 && r.right {
			b = append(b, ' ')
			b = append(b, r.state...)
		}
		// No trailing spaces.
		for len(b) > 0 && b[len(b)-1] == ' ' {
			b = b[:len(b)-1]
		}
		b = append(b, '\n')
	}
	return b
}

// appendWire draws a segment across the middle column, or blank.
func appendWire(b []byte, w wire) []byte {
	if w.label == "" {
		for i := 0; i < ladderWire; i++ {
			b = append(b, ' ')
		}
		return b
	}
	// ─── LABEL ───▶  or  ◀─── LABEL ───
	dashes := ladderWire - len(w.label) - 4
	lead := dashes / 2
	if !w.rightward {
		b = append(b, "◀"...)
	} else {
		b = append(b, "─"...)
	}
	for i := 0; i < lead; i++ {
		b = append(b, "─"...)
	}
	b = append(b, ' ')
	b = append(b, w.label...)
	b = append(b, ' ')
	for i := 0; i < dashes-lead; i++ {
		b = append(b, "─"...)
	}
	if w.rightward {
		b = append(b, "▶"...)
	} else {
		b = append(b, "─"...)
	}
	return b
}

// ladderRows turns a record's spans into rows; right says which column
// it is drawn in, so segments it sends point the other way.
func ladderRows(r, peer *lifecycle.Record, right bool) []ladderRow {
	send := func(label string) wire { return wire{label, !right} }
	recv := func(label string) wire { return wire{label, right} }
	var rows []ladderRow
	prev := probe.StateClose
	if r.Role == lifecycle.RolePassive {
		prev = probe.StateListen
	}
	for i, sp := range r.SpanList() {
		if sp.Enter == 0 {
			prev = sp.State
			continue
		}
		row := ladderRow{at: sp.Enter, right: right, state: sp.State.String()}
		switch {
		case prev == probe.StateClose && sp.State == probe.StateSynSent:
			row.wires = []wire{send("SYN")}
		case prev == probe.StateSynSent && sp.State == probe.StateEstablished:
			row.wires = []wire{recv("SYN,ACK"), send("ACK")}
		case prev == probe.StateSynSent && sp.State == probe.StateSynRecv:
			row.wires = []wire{recv("SYN"), send("SYN,ACK")}
		case sp.State == probe.StateFinWait1 || sp.State == probe.StateLastAck:
			row.wires = []wire{send("FIN")}
		case sp.State == probe.StateCloseWait || sp.State == probe.StateClosing:
			row.wires = []wire{send("ACK")}
		case sp.State == probe.StateTimeWait && (prev == probe.StateFinWait2 || prev == probe.StateFinWait1):
			row.wires = []wire{send("ACK")}
		}
		rows = append(rows, row)
		prev = sp.State
		_ = i
	}
	// The end: CLOSE at End, or at the end of TIME_WAIT.
	end := r.End
	if r.TimeWait != lifecycle.TWNone {
		end = r.TimeWaitExit
	}
	if end != 0 {
		row := ladderRow{at: end, right: right, state: "CLOSED"}
		switch {
		case r.Kind == lifecycle.KindResetSent:
			row.wires = []wire{send("RST")}
		case r.Kind == lifecycle.KindResetReceived && peer.Kind != lifecycle.KindResetSent,
			r.Kind == lifecycle.KindRefused:
			row.wires = []wire{recv("RST")}
		}
		if r.TimeWait == lifecycle.TWAssumed {
			row.state = "CLOSED (assumed)"
		}
		rows = append(rows, row)
	}
	return rows
}
