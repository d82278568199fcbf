package text

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// A fixed clock: monotonic zero is 2026-11-25 12:00:00 UTC.
var testClock = clock.Clock{BootNs: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).UnixNano()}

func event(family uint8, laddr, raddr string, lport, rport uint16, from, to probe.State) probe.Event {
	e := probe.Event{
		Type: uint8(probe.TypeState), Family: family, Sport: lport, Dport: rport,
		Oldstate: uint8(from), Newstate: uint8(to), TsNs: 1_500_000_000, ConnId: 8193,
		Pid: 4242, Tid: 4243, Owner: uint8(probe.OwnerCarried), Netns: 4026531840, CgroupId: 77,
		DeltaNs: 1_234_567, BytesAcked: 1002, BytesReceived: 2001, SrttUs: 45, TotalRetrans: 1,
		SegsIn: 9, SegsOut: 11,
		Flags: probe.FlagSynAcked | probe.FlagFinAcked | probe.FlagFinReceived,
	}
	copy(e.Comm[:], "curl")
	l, r := netip.MustParseAddr(laddr), netip.MustParseAddr(raddr)
	if family == probe.AFInet {
		a, b := l.As4(), r.As4()
		copy(e.Saddr[:], a[:])
		copy(e.Daddr[:], b[:])
	} else {
		e.Saddr, e.Daddr = l.As16(), r.As16()
	}
	return e
}

func TestEventRow(t *testing.T) {
	local := testClock.Wall(1_500_000_000).Local().Format("15:04:05.000000")
	v4 := event(probe.AFInet, "10.0.0.1", "192.168.1.20", 43210, 443, probe.StateFinWait2, probe.StateClose)
	v6 := event(probe.AFInet6, "2001:db8::1", "::1", 8080, 50000, probe.StateSynSent, probe.StateEstablished)
	unknown := v4
	unknown.Owner = uint8(probe.OwnerUnknown)
	unknown.Flags = probe.FlagPartial
	unknown.DeltaNs = 0
	evil := v4
	copy(evil.Comm[:], "a\x1b[2Jb\x00")
	reset := v4
	reset.Type = uint8(probe.TypeResetReceived)
	reset.Oldstate, reset.Newstate = uint8(probe.StateEstablished), uint8(probe.StateEstablished)
	reset.DeltaNs = 0

	cases := []struct {
		name string
		e    probe.Event
		want string
	}{
		{"ipv4", v4, local + " 4242    curl             10.0.0.1:43210        192.168.1.20:443      FIN_WAIT2   -> CLOSE            1.235\n"},
		{"ipv6", v6, local + " 4242    curl             [2001:db8::1]:8080    [::1]:50000           SYN_SENT    -> ESTABLISHED      1.235\n"},
		{"unknown owner, partial", unknown, local + " -       -                10.0.0.1:43210        192.168.1.20:443      FIN_WAIT2   -> CLOSE                -\n"},
		{"control bytes in comm", evil, local + " 4242    a?[2Jb           10.0.0.1:43210        192.168.1.20:443      FIN_WAIT2   -> CLOSE            1.235\n"},
		{"a reset, not a transition", reset, local + " 4242    curl             10.0.0.1:43210        192.168.1.20:443      ESTABLISHED    RST recv         0.000\n"},
	}
	for _, tc := range cases {
		if got := string(AppendEventRow(nil, &tc.e, testClock)); got != tc.want {
			t.Errorf("%s:\n got  %q\n want %q", tc.name, got, tc.want)
		}
	}
	header := EventHeader()
	row := string(AppendEventRow(nil, &v4, testClock))
	// Columns line up with the header.
	for _, col := range []string{"PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "OLD"} {
		if strings.Index(header, col) != strings.Index(row, map[string]string{
			"PID": "4242", "COMM": "curl", "LADDR:LPORT": "10.0.0.1", "RADDR:RPORT": "192.168", "OLD": "FIN_WAIT2"}[col]) {
			t.Errorf("column %s is not aligned:\n%s\n%s", col, header, row)
		}
	}
	if strings.Index(header, "NEW") != strings.Index(row, "CLOSE") || len(header) != len(row)-1 {
		t.Errorf("header and row differ in layout:\n%s\n%s", header, row)
	}
}

func TestRowDoesNotAllocate(t *testing.T) {
	e := event(probe.AFInet6, "2001:db8::1", "::1", 8080, 50000, probe.StateLastAck, probe.StateClose)
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(500, func() { buf = AppendEventRow(buf[:0], &e, testClock) }); n != 0 {
		t.Errorf("AppendEventRow allocates %.1f times per event", n)
	}
}
