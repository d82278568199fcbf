package jsonl

import (
	"strconv"
	"syscall"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
)

// AppendRecord appends a connection record as one JSON object and a newline: the
// schema of `tcpfsm life -o json` and of the agent's lifecycle logs.
// Durations are ns; state "at_ns" are offsets from the record's start.
// The container runtime's names, when the record carries them, are as
// meta.go says.
func AppendRecord(b []byte, r *lifecycle.Record, c clock.Clock) []byte {
	return AppendRecordFields(append(b, '{'), r, c)
}

// AppendRecordFields is AppendRecord without the opening brace: for a
// caller that writes fields of its own first (the agent's log lines,
// slog's keys and a comma), so that the object needs no second copy.
func AppendRecordFields(b []byte, r *lifecycle.Record, c clock.Clock) []byte {
	b = append(b, `"id":`...)
	b = appendUint(b, r.ID)
	b = append(b, `,"start":`...)
	b = appendTime(b, c, r.Start)
	b = append(b, `,"end":`...)
	if r.End != 0 {
		b = appendTime(b, c, r.End)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"role":`...)
	b = appendStr(b, r.Role.String())
	b = append(b, `,"family":`...)
	if r.Family == 2 {
		b = append(b, `"ipv4"`...)
	} else {
		b = append(b, `"ipv6"`...)
	}
	b = append(b, `,"laddr":`...)
	b = append(b, '"')
	b = r.LocalAddr().AppendTo(b)
	b = append(b, '"')
	b = append(b, `,"lport":`...)
	b = appendUint(b, uint64(r.Lport))
	b = append(b, `,"raddr":`...)
	b = append(b, '"')
	b = r.RemoteAddr().AppendTo(b)
	b = append(b, '"')
	b = append(b, `,"rport":`...)
	b = appendUint(b, uint64(r.Rport))
	b = append(b, `,"netns":`...)
	b = appendUint(b, uint64(r.NetNS))

	b = append(b, `,"owner":`...)
	if r.OwnerKnown() {
		b = append(b, `{"pid":`...)
		b = appendUint(b, uint64(r.Pid))
		b = append(b, `,"comm":`...)
		b = AppendString(b, r.CommBytes())
		b = append(b, `,"cgroup_id":`...)
		b = appendUint(b, r.CgroupID)
		if r.Cgroup != "" {
			b = append(b, `,"cgroup":`...)
			b = AppendString(b, r.Cgroup)
		}
		if r.Container != "" {
			b = append(b, `,"container":`...)
			b = AppendString(b, r.Container)
		}
		if r.Meta != nil {
			b = appendContainerFields(b, r.Meta)
		}
		b = append(b, `,"source":`...)
		b = appendStr(b, r.Owner.String())
		b = append(b, '}')
		b = appendK8s(b, "k8s", r.Meta)
	} else {
		b = append(b, "null"...)
	}
	b = appendK8s(b, "peer_k8s", r.Peer)

	// What a record first seen midway cannot know is null: its
	// handshake, its whole lifetime, its time in ESTABLISHED when it was
	// found there.
	b = append(b, `,"handshake_ns":`...)
	b = appendKnown(b, r.HandshakeNs, r.LifetimeKnown() || r.HandshakeNs != 0)
	b = append(b, `,"handshake_rtt_us":`...)
	b = appendUint(b, uint64(r.HandshakeRTTUs))
	b = append(b, `,"syn_retransmits":`...)
	b = appendUint(b, uint64(r.SynRetransmits))
	b = append(b, `,"established_ns":`...)
	b = appendKnown(b, r.EstablishedNs(), r.EstablishedKnown())
	b = append(b, `,"lifetime_ns":`...)
	b = appendKnown(b, r.LifetimeNs(), r.LifetimeKnown())

	b = append(b, `,"states":`...)
	b = append(b, '[')
	for i, sp := range r.SpanList() {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"state":`...)
		b = appendStr(b, sp.State.String())
		b = append(b, `,"at_ns":`...)
		if sp.Enter != 0 && sp.Enter >= r.Start {
			b = appendUint(b, sp.Enter-r.Start)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, `,"dwell_ns":`...)
		if sp.Exit != 0 && sp.Enter != 0 {
			b = appendUint(b, sp.Dwell())
		} else {
			b = append(b, "null"...)
		}
		b = append(b, '}')
	}
	b = append(b, ']')

	b = append(b, `,"closed_by":`...)
	b = appendStr(b, r.Initiator.String())
	b = append(b, `,"close":`...)
	b = appendStr(b, r.Kind.String())
	b = append(b, `,"error":`...)
	if r.SkErr != 0 {
		b = appendStr(b, errnoName(r.SkErr))
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"tx_bytes":`...)
	b = appendUint(b, r.TxBytes)
	b = append(b, `,"rx_bytes":`...)
	b = appendUint(b, r.RxBytes)
	b = append(b, `,"srtt_us":`...)
	b = appendUint(b, uint64(r.SrttUs))
	b = append(b, `,"retransmits":`...)
	b = appendUint(b, uint64(r.Retransmits))
	b = append(b, `,"segs_in":`...)
	b = appendUint(b, uint64(r.SegsIn))
	b = append(b, `,"segs_out":`...)
	b = appendUint(b, uint64(r.SegsOut))

	b = append(b, `,"time_wait":`...)
	if r.TimeWait == lifecycle.TWNone {
		b = append(b, "null"...)
	} else {
		// Seeded in TIME_WAIT, its entry is unknown: null, and its
		// duration a lower bound, since a dump found it.
		b = append(b, `{"enter_ns":`...)
		b = appendKnown(b, r.TimeWaitEnter-r.Start, r.TimeWaitEnter != 0)
		b = append(b, `,"duration_ns":`...)
		b = appendKnown(b, r.TimeWaitNs(), r.TimeWaitExit != 0 && r.TimeWaitEnter != 0)
		if r.TimeWaitEnter == 0 {
			b = append(b, `,"duration_ns_at_least":`...)
			b = appendKnown(b, r.TimeWaitAtLeastNs(), r.TimeWaitExit != 0)
		}
		b = append(b, `,"end":`...)
		b = appendStr(b, r.TimeWait.String())
		b = append(b, '}')
	}
	b = append(b, `,"anomalies":`...)
	b = append(b, '[')
	var names [8]string
	for i, n := range r.Anomalies.Names(names[:0]) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendStr(b, n)
	}
	b = append(b, ']')
	b = append(b, `,"seeded":`...)
	b = strconv.AppendBool(b, r.Seeded)
	return append(b, "}\n"...)
}

// appendKnown appends v, or null when it is not known.
func appendKnown(b []byte, v uint64, known bool) []byte {
	if !known {
		return append(b, "null"...)
	}
	return appendUint(b, v)
}

// appendStr appends a string known to need no escaping.
func appendStr(b []byte, s string) []byte {
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendTime appends a monotonic timestamp's wall clock time, quoted:
// c.Wall(mono).UTC() in time.RFC3339Nano.
func appendTime(b []byte, c clock.Clock, mono uint64) []byte {
	b = append(b, '"')
	b = AppendRFC3339Nano(b, c.BootNs+int64(mono))
	return append(b, '"')
}

// errnoName is the symbolic name of the errors a close can carry.
func errnoName(e uint16) string {
	switch syscall.Errno(e) {
	case syscall.ECONNRESET:
		return "ECONNRESET"
	case syscall.ECONNREFUSED:
		return "ECONNREFUSED"
	case syscall.ETIMEDOUT:
		return "ETIMEDOUT"
	case syscall.EPIPE:
		return "EPIPE"
	case syscall.EHOSTUNREACH:
		return "EHOSTUNREACH"
	case syscall.ENETUNREACH:
		return "ENETUNREACH"
	case syscall.ECONNABORTED:
		return "ECONNABORTED"
	case syscall.EPROTO:
		return "EPROTO"
	}
	return "errno " + strconv.Itoa(int(e))
}

// appendKey appends a comma and a key: for keys not known in advance
// (the constant ones are appended whole).
func appendKey(b []byte, k string) []byte {
	b = append(b, ',', '"')
	b = append(b, k...)
	return append(b, '"', ':')
}
