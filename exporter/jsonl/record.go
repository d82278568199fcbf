package jsonl

import (
	"strconv"
	"syscall"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
)

// AppendRecord appends a connection record as one JSON object and a newline: the
// schema of `tcpfsm life -o json` and of the agent's lifecycle logs.
// Durations are ns; state "at_ns" are offsets from the record's start.
// The container runtime's names, when the record carries them, are as
// meta.go says.
func AppendRecord(b []byte, r *lifecycle.Record, c clock.Clock) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendUint(b, r.ID, 10)
	b = appendKey(b, "start")
	b = appendTime(b, c, r.Start)
	b = appendKey(b, "end")
	if r.End != 0 {
		b = appendTime(b, c, r.End)
	} else {
		b = append(b, "null"...)
	}
	b = appendKey(b, "role")
	b = appendStr(b, r.Role.String())
	b = appendKey(b, "family")
	if r.Family == 2 {
		b = append(b, `"ipv4"`...)
	} else {
		b = append(b, `"ipv6"`...)
	}
	b = appendKey(b, "laddr")
	b = append(b, '"')
	b = r.LocalAddr().AppendTo(b)
	b = append(b, '"')
	b = appendKey(b, "lport")
	b = strconv.AppendUint(b, uint64(r.Lport), 10)
	b = appendKey(b, "raddr")
	b = append(b, '"')
	b = r.RemoteAddr().AppendTo(b)
	b = append(b, '"')
	b = appendKey(b, "rport")
	b = strconv.AppendUint(b, uint64(r.Rport), 10)
	b = appendKey(b, "netns")
	b = strconv.AppendUint(b, uint64(r.NetNS), 10)

	b = appendKey(b, "owner")
	if r.OwnerKnown() {
		b = append(b, `{"pid":`...)
		b = strconv.AppendUint(b, uint64(r.Pid), 10)
		b = appendKey(b, "comm")
		b = AppendString(b, r.CommBytes())
		b = appendKey(b, "cgroup_id")
		b = strconv.AppendUint(b, r.CgroupID, 10)
		if r.Cgroup != "" {
			b = appendKey(b, "cgroup")
			b = AppendString(b, r.Cgroup)
		}
		if r.Container != "" {
			b = appendKey(b, "container")
			b = AppendString(b, r.Container)
		}
		if r.Meta != nil {
			b = appendContainerFields(b, r.Meta)
		}
		b = appendKey(b, "source")
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
	b = appendKey(b, "handshake_ns")
	b = appendKnown(b, r.HandshakeNs, r.LifetimeKnown() || r.HandshakeNs != 0)
	b = appendKey(b, "handshake_rtt_us")
	b = strconv.AppendUint(b, uint64(r.HandshakeRTTUs), 10)
	b = appendKey(b, "syn_retransmits")
	b = strconv.AppendUint(b, uint64(r.SynRetransmits), 10)
	b = appendKey(b, "established_ns")
	b = appendKnown(b, r.EstablishedNs(), r.EstablishedKnown())
	b = appendKey(b, "lifetime_ns")
	b = appendKnown(b, r.LifetimeNs(), r.LifetimeKnown())

	b = appendKey(b, "states")
	b = append(b, '[')
	for i, sp := range r.SpanList() {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"state":`...)
		b = appendStr(b, sp.State.String())
		b = appendKey(b, "at_ns")
		if sp.Enter != 0 && sp.Enter >= r.Start {
			b = strconv.AppendUint(b, sp.Enter-r.Start, 10)
		} else {
			b = append(b, "null"...)
		}
		b = appendKey(b, "dwell_ns")
		if sp.Exit != 0 && sp.Enter != 0 {
			b = strconv.AppendUint(b, sp.Dwell(), 10)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, '}')
	}
	b = append(b, ']')

	b = appendKey(b, "closed_by")
	b = appendStr(b, r.Initiator.String())
	b = appendKey(b, "close")
	b = appendStr(b, r.Kind.String())
	b = appendKey(b, "error")
	if r.SkErr != 0 {
		b = appendStr(b, errnoName(r.SkErr))
	} else {
		b = append(b, "null"...)
	}
	b = appendKey(b, "tx_bytes")
	b = strconv.AppendUint(b, r.TxBytes, 10)
	b = appendKey(b, "rx_bytes")
	b = strconv.AppendUint(b, r.RxBytes, 10)
	b = appendKey(b, "srtt_us")
	b = strconv.AppendUint(b, uint64(r.SrttUs), 10)
	b = appendKey(b, "retransmits")
	b = strconv.AppendUint(b, uint64(r.Retransmits), 10)
	b = appendKey(b, "segs_in")
	b = strconv.AppendUint(b, uint64(r.SegsIn), 10)
	b = appendKey(b, "segs_out")
	b = strconv.AppendUint(b, uint64(r.SegsOut), 10)

	b = appendKey(b, "time_wait")
	if r.TimeWait == lifecycle.TWNone {
		b = append(b, "null"...)
	} else {
		// Seeded in TIME_WAIT, its entry is unknown: null, and its
		// duration a lower bound, since a dump found it.
		b = append(b, `{"enter_ns":`...)
		b = appendKnown(b, r.TimeWaitEnter-r.Start, r.TimeWaitEnter != 0)
		b = appendKey(b, "duration_ns")
		b = appendKnown(b, r.TimeWaitNs(), r.TimeWaitExit != 0 && r.TimeWaitEnter != 0)
		if r.TimeWaitEnter == 0 {
			b = appendKey(b, "duration_ns_at_least")
			b = appendKnown(b, r.TimeWaitAtLeastNs(), r.TimeWaitExit != 0)
		}
		b = appendKey(b, "end")
		b = appendStr(b, r.TimeWait.String())
		b = append(b, '}')
	}
	b = appendKey(b, "anomalies")
	b = append(b, '[')
	var names [8]string
	for i, n := range r.Anomalies.Names(names[:0]) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendStr(b, n)
	}
	b = append(b, ']')
	b = appendKey(b, "seeded")
	b = strconv.AppendBool(b, r.Seeded)
	return append(b, "}\n"...)
}

// appendKnown appends v, or null when it is not known.
func appendKnown(b []byte, v uint64, known bool) []byte {
	if !known {
		return append(b, "null"...)
	}
	return strconv.AppendUint(b, v, 10)
}

func appendKey(b []byte, k string) []byte {
	b = append(b, ',', '"')
	b = append(b, k...)
	return append(b, '"', ':')
}

// appendStr appends a string known to need no escaping.
func appendStr(b []byte, s string) []byte {
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendTime(b []byte, c clock.Clock, mono uint64) []byte {
	b = append(b, '"')
	b = c.Wall(mono).UTC().AppendFormat(b, time.RFC3339Nano)
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
