package top

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/charmbracelet/x/ansi"

	"github.com/tcpfsm/tcpfsm/exporter/connview"
)

// Duration writes seconds as a person reads them at a glance, in at most
// 7 columns: 42µs, 1.5ms, 310ms, 4.21s, 12.3s, 5m02s, 3h05m, 2d03h.
func Duration(s float64) string {
	switch {
	case s < 0:
		return "-"
	case s == 0:
		return "0s"
	case s < 0.001:
		return strconv.FormatFloat(s*1e6, 'f', 0, 64) + "µs"
	case s < 0.01:
		return strconv.FormatFloat(s*1e3, 'f', 1, 64) + "ms"
	case s < 1:
		return strconv.FormatFloat(s*1e3, 'f', 0, 64) + "ms"
	case s < 10:
		return strconv.FormatFloat(s, 'f', 2, 64) + "s"
	case s < 60:
		return strconv.FormatFloat(s, 'f', 1, 64) + "s"
	}
	t := int64(s)
	switch {
	case t < 3600:
		return fmt.Sprintf("%dm%02ds", t/60, t%60)
	case t < 86400:
		return fmt.Sprintf("%dh%02dm", t/3600, t%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", t/86400, t%86400/3600)
}

// Age is a known duration, or "≥" and its lower bound when the exact one
// is unknown: never a made-up age.
func Age(exact *float64, atLeast float64) string {
	if exact != nil {
		return Duration(*exact)
	}
	return "≥" + Duration(atLeast)
}

// StateAge is a connection's time in its state, as Age writes it.
func StateAge(c *connview.Conn) string { return Age(c.StateSeconds, c.StateSecondsAtLeast) }

// Lifetime is a connection's lifetime so far, as Age writes it.
func Lifetime(c *connview.Conn) string { return Age(c.LifetimeSeconds, c.LifetimeSecondsAtLeast) }

// Bytes writes a byte count in at most 5 columns: 999, 1.2K, 34M.
func Bytes(n uint64) string {
	const units = "KMGTPE"
	if n < 1000 {
		return strconv.FormatUint(n, 10)
	}
	f := float64(n)
	for i := 0; i < len(units); i++ {
		f /= 1024
		if f < 9.95 {
			return strconv.FormatFloat(f, 'f', 1, 64) + units[i:i+1]
		}
		if f < 999.5 {
			return strconv.FormatFloat(f, 'f', 0, 64) + units[i:i+1]
		}
	}
	return "big"
}

// Endpoint writes an address and port, IPv6 in brackets.
func Endpoint(addr string, port uint16) string {
	if strings.Contains(addr, ":") {
		return "[" + addr + "]:" + strconv.Itoa(int(port))
	}
	return addr + ":" + strconv.Itoa(int(port))
}

// StateName is a state in the table: ESTABLISHED is ESTAB there, as ss
// writes it, so every state fits 10 columns.
func StateName(s string) string {
	if s == "ESTABLISHED" {
		return "ESTAB"
	}
	return s
}

// width is the cells a string takes.
func width(s string) int { return ansi.StringWidth(s) }

// fit pads or cuts s to exactly w cells: cut on the right with "…".
func fit(s string, w int) string {
	if w <= 0 {
		return ""
	}
	if n := width(s); n <= w {
		return s + strings.Repeat(" ", w-n)
	}
	return ansi.Truncate(s, w, "…")
}

// fitRight right-aligns s in w cells, cutting it on the left with "…":
// for numbers, and endpoints whose port matters most.
func fitRight(s string, w int) string {
	if w <= 0 {
		return ""
	}
	n := width(s)
	if n <= w {
		return strings.Repeat(" ", w-n) + s
	}
	return cutLeft(s, w)
}

// fitLeftCut left-aligns s in w cells, cutting it on the left.
func fitLeftCut(s string, w int) string {
	if n := width(s); n <= w {
		return s + strings.Repeat(" ", w-n)
	}
	return cutLeft(s, w)
}

func cutLeft(s string, w int) string {
	if w <= 0 {
		return ""
	}
	// Drop runes from the left until "…" and the rest fit.
	for width(s) > w-1 && s != "" {
		_, size := utf8.DecodeRuneInString(s)
		s = s[size:]
	}
	return "…" + s
}
