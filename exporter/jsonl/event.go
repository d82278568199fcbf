// Package jsonl encodes events and connection records as JSON lines, one
// object per line: the -o json output of tcpfsm trace and life, and the
// objects of the agent's logs, so both show one schema. Each encoder
// appends to a caller's buffer and does not allocate.
package jsonl

import (
	"unicode/utf8"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// AppendEvent appends e as one JSON object with every field, and a
// newline. Times are RFC 3339 in UTC; durations are nanoseconds.
func AppendEvent(b []byte, e *probe.Event, c clock.Clock) []byte {
	return AppendEventMeta(b, e, c, nil)
}

// AppendEventMeta is AppendEvent with what the container runtime said of
// the owner's container, when m is not nil: "container" (runtime:id),
// "container_name", "image" and "k8s" after "cgroup_id" (meta.go).
func AppendEventMeta(b []byte, e *probe.Event, c clock.Clock, m *metadata.Meta) []byte {
	return AppendEventMetaFields(append(b, '{'), e, c, m)
}

// AppendEventMetaFields is AppendEventMeta without the opening brace, as
// AppendRecordFields.
func AppendEventMetaFields(b []byte, e *probe.Event, c clock.Clock, m *metadata.Meta) []byte {
	b = append(b, `"time":"`...)
	b = AppendRFC3339Nano(b, c.BootNs+int64(e.TsNs))
	b = append(b, `","ts_ns":`...)
	b = appendUint(b, e.TsNs)
	b = append(b, `,"type":"`...)
	b = append(b, probe.EventType(e.Type).String()...)
	b = append(b, `","conn_id":`...)
	b = appendUint(b, e.ConnId)
	b = append(b, `,"family":"`...)
	if e.Family == probe.AFInet {
		b = append(b, "ipv4"...)
	} else {
		b = append(b, "ipv6"...)
	}
	b = append(b, `","laddr":"`...)
	b = e.LocalAddr().AppendTo(b)
	b = append(b, `","lport":`...)
	b = appendUint(b, uint64(e.Sport))
	b = append(b, `,"raddr":"`...)
	b = e.RemoteAddr().AppendTo(b)
	b = append(b, `","rport":`...)
	b = appendUint(b, uint64(e.Dport))
	b = append(b, `,"netns":`...)
	b = appendUint(b, uint64(e.Netns))
	b = append(b, `,"old":"`...)
	b = append(b, e.OldState().String()...)
	b = append(b, `","new":"`...)
	b = append(b, e.NewState().String()...)
	b = append(b, `","old_state_ns":`...)
	b = appendUint(b, e.DeltaNs)
	b = append(b, `,"owner":"`...)
	b = append(b, e.OwnerSource().String()...)
	b = append(b, `","pid":`...)
	b = appendUint(b, uint64(e.Pid))
	b = append(b, `,"tid":`...)
	b = appendUint(b, uint64(e.Tid))
	b = append(b, `,"comm":`...)
	b = AppendString(b, e.CommBytes())
	b = append(b, `,"cgroup_id":`...)
	b = appendUint(b, e.CgroupId)
	if m != nil {
		b = append(b, `,"container":"`...)
		b = append(b, m.Runtime...)
		b = append(b, ':')
		b = append(b, m.ID...)
		b = append(b, '"')
		b = appendContainerFields(b, m)
		b = appendK8s(b, "k8s", m)
	}
	b = append(b, `,"tx_bytes":`...)
	b = appendUint(b, e.TxBytes())
	b = append(b, `,"rx_bytes":`...)
	b = appendUint(b, e.RxBytes())
	b = append(b, `,"bytes_acked":`...)
	b = appendUint(b, e.BytesAcked)
	b = append(b, `,"bytes_received":`...)
	b = appendUint(b, e.BytesReceived)
	b = append(b, `,"srtt_us":`...)
	b = appendUint(b, uint64(e.SrttUs))
	b = append(b, `,"total_retrans":`...)
	b = appendUint(b, uint64(e.TotalRetrans))
	b = append(b, `,"segs_in":`...)
	b = appendUint(b, uint64(e.SegsIn))
	b = append(b, `,"segs_out":`...)
	b = appendUint(b, uint64(e.SegsOut))
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

// AppendString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD, as encoding/json does.
func AppendString[S ~string | ~[]byte](b []byte, s S) []byte {
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
		// At most UTFMax bytes: the conversion stays on the stack.
		r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
