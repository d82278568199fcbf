package text

import (
	"net/netip"
	"strconv"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
)

// Column widths of the lifecycle table.
const (
	wRole = 8
	wDur  = 9
	wBy   = 7
	wHow  = 26
)

// LifeHeader is the lifecycle table's header line, without newline.
func LifeHeader() string {
	b := make([]byte, 0, 200)
	b = pad(append(b, "TIME"...), 4, wTime)
	b = pad(append(b, "PID"...), 3, wPID)
	b = pad(append(b, "COMM"...), 4, wComm)
	b = pad(append(b, "LADDR:LPORT"...), 11, wAddr)
	b = pad(append(b, "RADDR:RPORT"...), 11, wAddr)
	b = pad(append(b, "ROLE"...), 4, wRole)
	b = padLeft(b, "HS_MS", wDur)
	b = padLeft(append(b, ' '), "LIFE_MS", wDur+2)
	b = padLeft(append(b, ' '), "TX_B", 10)
	b = padLeft(append(b, ' '), "RX_B", 10)
	b = append(b, "  "...)
	b = pad(append(b, "BY"...), 2, wBy)
	b = pad(append(b, "HOW"...), 3, wHow)
	b = padLeft(b, "TW_MS", wDur)
	return string(b)
}

// AppendLifeRow appends one table line for a record: the wall clock time
// it closed, owner, endpoints, role, handshake and lifetime in ms, payload
// bytes each way, who closed it and how, and its TIME_WAIT in ms ("-"
// without one, "~" when only assumed, "pending" while still in it, ">="
// a lower bound for one seeded in TIME_WAIT, its entry unknown).
func AppendLifeRow(b []byte, r *lifecycle.Record, c clock.Clock) []byte {
	at := r.End
	if at == 0 {
		at = r.Start
	}
	b = appendRowStart(b, c, at, r.OwnerKnown(), r.Pid, r.CommBytes(),
		netip.AddrPortFrom(r.LocalAddr(), r.Lport), netip.AddrPortFrom(r.RemoteAddr(), r.Rport))
	role := r.Role.String()
	b = pad(append(b, role...), len(role), wRole)

	var num [32]byte
	if r.HandshakeNs > 0 {
		b = padLeft(b, strconv.AppendFloat(num[:0], float64(r.HandshakeNs)/1e6, 'f', 3, 64), wDur)
	} else {
		b = padLeft(b, "-", wDur)
	}
	b = append(b, ' ')
	if r.End != 0 {
		life := num[:0]
		if !r.LifetimeKnown() {
			life = append(life, ">="...) // first seen midway: a lower bound
		}
		life = strconv.AppendFloat(life, float64(r.LifetimeNs())/1e6, 'f', 3, 64)
		b = padLeft(b, life, wDur+2)
	} else if r.TimeWait != lifecycle.TWNone {
		b = padLeft(b, "-", wDur+2) // seeded in TIME_WAIT: closed before it was found
	} else {
		b = padLeft(b, "open", wDur+2)
	}
	b = append(b, ' ')
	b = padLeft(b, strconv.AppendUint(num[:0], r.TxBytes, 10), 10)
	b = append(b, ' ')
	b = padLeft(b, strconv.AppendUint(num[:0], r.RxBytes, 10), 10)
	b = append(b, "  "...)
	by := r.Initiator.String()
	if r.Initiator == lifecycle.InitiatorUnknown {
		by = "-"
	}
	b = pad(append(b, by...), len(by), wBy)
	if r.End == 0 && r.Kind == lifecycle.KindOpen {
		b = appendOpenState(b, r)
	} else {
		how := r.Kind.String()
		b = pad(append(b, how...), len(how), wHow)
	}
	switch {
	case r.TimeWait == lifecycle.TWNone:
		b = padLeft(b, "-", wDur)
	case r.TimeWait == lifecycle.TWPending:
		b = padLeft(b, "pending", wDur)
	case r.TimeWaitEnter == 0:
		// Seeded in TIME_WAIT: at least since it was found.
		tw := append(num[:0], ">="...)
		tw = strconv.AppendFloat(tw, float64(r.TimeWaitAtLeastNs())/1e6, 'f', 1, 64)
		b = padLeft(b, tw, wDur)
	case r.TimeWait == lifecycle.TWAssumed:
		tw := append(num[:0], '~')
		tw = strconv.AppendFloat(tw, float64(r.TimeWaitNs())/1e6, 'f', 0, 64)
		b = padLeft(b, tw, wDur)
	default:
		b = padLeft(b, strconv.AppendFloat(num[:0], float64(r.TimeWaitNs())/1e6, 'f', 1, 64), wDur)
	}
	return append(b, '\n')
}

// appendOpenState is the HOW column of a connection still open when the
// record was handed out: "open", its state and the time it had been in
// it, in seconds: exact, or ">=" a lower bound when the state's entry is
// unknown (a connection found in it by sock_diag: since it was found,
// at the latest the agent's start).
func appendOpenState(b []byte, r *lifecycle.Record) []byte {
	start := len(b)
	st, _ := r.Current()
	b = append(b, "open "...)
	b = append(b, st.String()...)
	if r.Emitted != 0 {
		age, exact := r.StateAge(r.Emitted)
		b = append(b, ' ')
		if !exact {
			b = append(b, ">="...)
		}
		b = strconv.AppendFloat(b, float64(age)/1e9, 'f', 1, 64)
		b = append(b, 's')
	}
	return pad(b, len(b)-start, wHow)
}
