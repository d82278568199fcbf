// Package render turns events into the lines tcpfsm prints: an aligned
// table for people and JSON lines for programs. Both append to a caller's
// buffer and do not allocate per event.
package render

import (
	"net/netip"
	"strconv"
	"time"
	"unicode/utf8"

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

// AppendEventJSON appends e as one JSON object with every field, and a
// newline. Times are RFC 3339 in UTC; durations are nanoseconds.
func AppendEventJSON(b []byte, e *probe.Event, c clock.Clock) []byte {
	b = append(b, `{"time":"`...)
	b = c.Wall(e.TsNs).UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","ts_ns":`...)
	b = strconv.AppendUint(b, e.TsNs, 10)
	b = append(b, `,"type":"`...)
	b = append(b, probe.EventType(e.Type).String()...)
	b = append(b, `","conn_id":`...)
	b = strconv.AppendUint(b, e.ConnId, 10)
	b = append(b, `,"family":"`...)
	if e.Family == probe.AFInet {
		b = append(b, "ipv4"...)
	} else {
		b = append(b, "ipv6"...)
	}
	b = append(b, `","laddr":"`...)
	b = e.LocalAddr().AppendTo(b)
	b = append(b, `","lport":`...)
	b = strconv.AppendUint(b, uint64(e.Sport), 10)
	b = append(b, `,"raddr":"`...)
	b = e.RemoteAddr().AppendTo(b)
	b = append(b, `","rport":`...)
	b = strconv.AppendUint(b, uint64(e.Dport), 10)
	b = append(b, `,"netns":`...)
	b = strconv.AppendUint(b, uint64(e.Netns), 10)
	b = append(b, `,"old":"`...)
	b = append(b, e.OldState().String()...)
	b = append(b, `","new":"`...)
	b = append(b, e.NewState().String()...)
	b = append(b, `","old_state_ns":`...)
	b = strconv.AppendUint(b, e.DeltaNs, 10)
	b = append(b, `,"owner":"`...)
	b = append(b, e.OwnerSource().String()...)
	b = append(b, `","pid":`...)
	b = strconv.AppendUint(b, uint64(e.Pid), 10)
	b = append(b, `,"tid":`...)
	b = strconv.AppendUint(b, uint64(e.Tid), 10)
	b = append(b, `,"comm":`...)
	b = AppendJSONString(b, e.CommBytes())
	b = append(b, `,"cgroup_id":`...)
	b = strconv.AppendUint(b, e.CgroupId, 10)
	b = append(b, `,"tx_bytes":`...)
	b = strconv.AppendUint(b, e.TxBytes(), 10)
	b = append(b, `,"rx_bytes":`...)
	b = strconv.AppendUint(b, e.RxBytes(), 10)
	b = append(b, `,"bytes_acked":`...)
	b = strconv.AppendUint(b, e.BytesAcked, 10)
	b = append(b, `,"bytes_received":`...)
	b = strconv.AppendUint(b, e.BytesReceived, 10)
	b = append(b, `,"srtt_us":`...)
	b = strconv.AppendUint(b, uint64(e.SrttUs), 10)
	b = append(b, `,"total_retrans":`...)
	b = strconv.AppendUint(b, uint64(e.TotalRetrans), 10)
	b = append(b, `,"segs_in":`...)
	b = strconv.AppendUint(b, uint64(e.SegsIn), 10)
	b = append(b, `,"segs_out":`...)
	b = strconv.AppendUint(b, uint64(e.SegsOut), 10)
	b = append(b, `,"flags":[`...)
	first := true
	for _, f := range flagNames {
		if e.Flags&f.bit == 0 {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, f.name...)
		b = append(b, '"')
	}
	return append(b, "]}\n"...)
}

var flagNames = [...]struct {
	bit  uint8
	name string
}{
	{probe.FlagPartial, "partial"},
	{probe.FlagDeferred, "deferred"},
	{probe.FlagSynAcked, "syn_acked"},
	{probe.FlagFinAcked, "fin_acked"},
	{probe.FlagFinReceived, "fin_received"},
}

// AppendJSONString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD, as encoding/json does.
func AppendJSONString(b, s []byte) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
