// Package text draws what tcpfsm prints for people: the aligned tables of
// tcpfsm trace and life, and ladder diagrams of connections whose two
// ends are on one host. Each appends to a caller's buffer; the event rows
// do not allocate. (Programs get JSON lines: package jsonl.)
package text

import (
	"net/netip"
	"strconv"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Column widths of the event table. An IPv6 endpoint wider than its
// column pushes the rest of its line right rather than being cut.
const (
	wTime  = 15 // 15:04:05.000000
	wPID   = 7
	wComm  = 16
	wAddr  = 21 // 255.255.255.255:65535
	wState = 11 // ESTABLISHED
	wMs    = 10
)

// EventHeader is the table's header line, without newline.
func EventHeader() string {
	b := make([]byte, 0, 128)
	b = pad(append(b, "TIME"...), 4, wTime)
	b = pad(append(b, "PID"...), 3, wPID)
	b = pad(append(b, "COMM"...), 4, wComm)
	b = pad(append(b, "LADDR:LPORT"...), 11, wAddr)
	b = pad(append(b, "RADDR:RPORT"...), 11, wAddr)
	b = pad(append(b, "OLD"...), 3, wState)
	b = append(b, "   "...)
	b = pad(append(b, "NEW"...), 3, wState)
	b = padLeft(b, "MS", wMs)
	return string(b)
}

// AppendEventRow appends one table line for e, with newline. The time is
// local wall clock time; PID and COMM are "-" when the owner is unknown,
// MS (time spent in the old state) is "-" when that state's start was not
// seen.
func AppendEventRow(b []byte, e *probe.Event, c clock.Clock) []byte {
	b = appendRowStart(b, c, e.TsNs, e.OwnerKnown(), e.Pid, e.CommBytes(),
		netip.AddrPortFrom(e.LocalAddr(), e.Sport), netip.AddrPortFrom(e.RemoteAddr(), e.Dport))
	old := e.OldState().String()
	b = pad(append(b, old...), len(old), wState)
	if t := e.EventType(); t != probe.TypeState && t != probe.TypeTimeWaitEnd {
		// Not a transition: the state it happened in, and what happened.
		what := eventLabel[t]
		b = append(b, "   "...)
		b = pad(append(b, what...), len(what), wState)
	} else {
		b = append(b, "-> "...)
		nw := e.NewState().String()
		b = pad(append(b, nw...), len(nw), wState)
	}

	if e.DeltaNs == 0 && e.Partial() {
		b = padLeft(b, "-", wMs)
	} else {
		var num [24]byte
		ms := strconv.AppendFloat(num[:0], float64(e.DeltaNs)/1e6, 'f', 3, 64)
		b = padLeft(b, ms, wMs)
	}
	return append(b, '\n')
}

// appendRowStart appends the columns event and lifecycle tables share:
// time, owner ("-" when unknown) and the two endpoints.
func appendRowStart(b []byte, c clock.Clock, mono uint64, ownerKnown bool, pid uint32, comm []byte, local, remote netip.AddrPort) []byte {
	start := len(b)
	b = c.Wall(mono).AppendFormat(b, "15:04:05.000000")
	b = pad(b, len(b)-start, wTime)
	if ownerKnown {
		start = len(b)
		b = strconv.AppendUint(b, uint64(pid), 10)
		b = pad(b, len(b)-start, wPID)
		start = len(b)
		b = appendPrintable(b, comm)
		b = pad(b, len(b)-start, wComm)
	} else {
		b = pad(append(b, '-'), 1, wPID)
		b = pad(append(b, '-'), 1, wComm)
	}
	start = len(b)
	b = local.AppendTo(b)
	b = pad(b, len(b)-start, wAddr)
	start = len(b)
	b = remote.AppendTo(b)
	return pad(b, len(b)-start, wAddr)
}

// eventLabel names the events that are not transitions in the table.
var eventLabel = map[probe.EventType]string{
	probe.TypeResetSent:     "RST sent",
	probe.TypeResetReceived: "RST recv",
	probe.TypeSynRetransmit: "SYN retx",
}

// pad appends spaces so a field of length n fills width, plus one
// separating space; a longer field gets just the separator.
func pad(b []byte, n, width int) []byte {
	for ; n < width; n++ {
		b = append(b, ' ')
	}
	return append(b, ' ')
}

func padLeft[S ~string | ~[]byte](b []byte, s S, width int) []byte {
	for n := len(s); n < width; n++ {
		b = append(b, ' ')
	}
	return append(b, s...)
}

// appendPrintable appends a comm, replacing bytes a terminal would act on.
func appendPrintable(b, s []byte) []byte {
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			c = '?'
		}
		b = append(b, c)
	}
	return b
}
