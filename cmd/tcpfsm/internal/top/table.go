package top

import (
	"io"
	"strconv"
	"strings"

	"github.com/tcpfsm/tcpfsm/exporter/connview"
)

// The connections table: one line per connection, its columns sized to
// the terminal. Owner, endpoints, state, time in state, lifetime and
// bytes always; the container where the width allows. Endpoints share
// what is left and are cut on the left, so the port stays.

type column struct {
	title string
	width int
	right bool // numbers right-aligned; endpoints cut on the left
	cut   bool // cut on the left
	get   func(c *connview.Conn) string
}

const (
	minEndpoint = 12
	maxEndpoint = 47 // [IPv6]:port
	maxComm     = 15 // the kernel keeps 15 bytes
)

// columns lays the table out for a width.
func columns(w int) []column {
	owner := func(c *connview.Conn) (pid, comm, container string) {
		if c.Owner == nil {
			return "-", "-", ""
		}
		return strconv.FormatUint(uint64(c.Owner.Pid), 10), c.Owner.Comm, c.Owner.Container
	}
	mark := column{"", 1, false, false, func(c *connview.Conn) string {
		if c.Stuck {
			return "!"
		}
		return " "
	}}
	pid := column{"PID", 7, true, false, func(c *connview.Conn) string { p, _, _ := owner(c); return p }}
	comm := column{"COMM", 9, false, false, func(c *connview.Conn) string { _, n, _ := owner(c); return n }}
	local := column{"LOCAL", minEndpoint, false, true, func(c *connview.Conn) string { return Endpoint(c.Laddr, c.Lport) }}
	remote := column{"REMOTE", minEndpoint, false, true, func(c *connview.Conn) string { return Endpoint(c.Raddr, c.Rport) }}
	state := column{"STATE", 10, false, false, func(c *connview.Conn) string { return StateName(c.State) }}
	inState := column{"IN STATE", 8, true, false, StateAge}
	life := column{"LIFETIME", 8, true, false, Lifetime}
	bytes := column{"BYTES", 5, true, false, func(c *connview.Conn) string { return Bytes(c.TxBytes + c.RxBytes) }}
	container := column{"CONTAINER", 0, false, false, func(c *connview.Conn) string {
		_, _, ct := owner(c)
		if ct == "" {
			return "-"
		}
		// runtime:id, the id as docker ps shows it.
		if rt, id, ok := strings.Cut(ct, ":"); ok && len(id) > 12 {
			return rt + ":" + id[:12]
		}
		return ct
	}}
	cols := []column{mark, pid, comm, local, remote, state, inState, life, bytes}
	used := func() int {
		n := len(cols) - 1 // one space between columns
		for _, c := range cols {
			n += c.width
		}
		return n
	}
	// Give the rest to the endpoints (up to an IPv4 endpoint's width),
	// the command name, the container, then the endpoints again.
	spare := w - used()
	growEndpoints := func(upTo int) {
		g := min(max(spare/2, 0), upTo-cols[3].width)
		if g > 0 {
			cols[3].width += g
			cols[4].width += g
			spare -= 2 * g
		}
	}
	growEndpoints(21)
	if g := min(max(spare, 0), maxComm-cols[2].width); g > 0 {
		cols[2].width += g
		spare -= g
	}
	if spare >= 13 {
		container.width = min(spare-1, 23)
		spare -= container.width + 1
		cols = append(cols, container)
	}
	growEndpoints(maxEndpoint)
	return cols
}

// tableWidth is the cells a layout takes.
func tableWidth(cols []column) int {
	n := len(cols) - 1
	for _, c := range cols {
		n += c.width
	}
	return n
}

func cell(c column, s string) string {
	switch {
	case c.cut:
		return fitLeftCut(s, c.width)
	case c.right:
		return fitRight(s, c.width)
	}
	return fit(s, c.width)
}

// headerRow is the table's title line.
func headerRow(cols []column) string {
	var b strings.Builder
	for i, c := range cols {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(cell(c, c.title))
	}
	return b.String()
}

// row is one connection's line.
func row(cols []column, c *connview.Conn) string {
	var b strings.Builder
	for i, col := range cols {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(cell(col, col.get(c)))
	}
	return b.String()
}

// WriteTable prints connections as a plain table, the header first, as
// top --once does: every column at full width, no trailing spaces.
func WriteTable(w io.Writer, conns []connview.Conn) error {
	wide := 1 + 7 + maxComm + 2*maxEndpoint + 10 + 8 + 8 + 5 + 8
	// The container column, as wide as the longest.
	ct := 0
	for i := range conns {
		if o := conns[i].Owner; o != nil && o.Container != "" {
			ct = max(ct, min(width(o.Container), 40))
		}
	}
	cols := columns(wide)
	if ct > 0 {
		cols = columns(wide + max(ct, 9) + 1)
	}
	// Endpoints as wide as the widest, not the most they could be.
	for _, i := range []int{3, 4} {
		n := width(cols[i].title)
		for j := range conns {
			n = max(n, width(cols[i].get(&conns[j])))
		}
		cols[i].width = n
	}
	var b strings.Builder
	b.WriteString(strings.TrimRight(headerRow(cols), " ") + "\n")
	for i := range conns {
		b.WriteString(strings.TrimRight(row(cols, &conns[i]), " ") + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
