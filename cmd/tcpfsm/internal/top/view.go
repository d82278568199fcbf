package top

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/charmbracelet/lipgloss"

	"github.com/tcpfsm/tcpfsm/exporter/text"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

var (
	styleTitle    = lipgloss.NewStyle().Bold(true)
	styleHeader   = lipgloss.NewStyle().Reverse(true)
	styleSelected = lipgloss.NewStyle().Reverse(true)
	styleStuck    = lipgloss.NewStyle().Foreground(lipgloss.Color("9")).Bold(true)
	styleStuckSel = lipgloss.NewStyle().Foreground(lipgloss.Color("9")).Bold(true).Reverse(true)
	styleError    = lipgloss.NewStyle().Foreground(lipgloss.Color("9"))
	styleDim      = lipgloss.NewStyle().Faint(true)
)

// headerLines is what the table's area leaves above and below it: the
// title, the states, the rates, the stuck states, the selection, the
// column titles; the keys' line at the bottom.
func (m *Model) headerLines() []string {
	w := m.width
	var lines []string
	// Title.
	title := "tcpfsm top · " + m.src.Name()
	right := ""
	if m.snap != nil {
		right = m.snap.Summary.Time.Local().Format("15:04:05")
	}
	if m.paused {
		right = "PAUSED  " + right
	}
	lines = append(lines, styleTitle.Render(fit(title, max(w-width(right)-1, 0)))+" "+right)
	// States, with their change since the reading before.
	var tokens []string
	for _, st := range pickStates {
		name := st.String()
		n := 0
		if m.snap != nil {
			n = m.snap.Summary.States[name]
		}
		tok := StateName(name) + " " + strconv.Itoa(n)
		if d := m.changes[name]; d != 0 {
			tok += fmt.Sprintf("(%+d)", d)
		}
		tokens = append(tokens, tok)
	}
	lines = append(lines, wrap(tokens, w)...)
	// Rates.
	r := m.rates
	lines = append(lines, fit(fmt.Sprintf("opens %.1f/s  closes %.1f/s  resets %.1f/s  failed connects %.1f/s",
		r.opens, r.closes, r.resets, r.failures), w))
	// Stuck states.
	var stuck []string
	if m.snap != nil {
		for _, s := range m.snap.Summary.Stuck {
			if s.Stuck > 0 {
				stuck = append(stuck, fmt.Sprintf("%s %d (>%s, oldest %s)", s.State, s.Stuck, Duration(s.ThresholdSeconds), Duration(s.OldestSeconds)))
			}
		}
	}
	if len(stuck) == 0 {
		lines = append(lines, fit("stuck: none", w))
	} else {
		lines = append(lines, styleStuck.Render(fit("stuck: "+strings.Join(stuck, ", "), w)))
	}
	// The selection.
	sel := "showing 0"
	if m.snap != nil {
		sel = fmt.Sprintf("showing %d of %d", len(m.snap.Conns), m.snap.Matched)
	}
	states := "all states"
	if len(m.q.States) > 0 {
		var names []string
		for _, st := range m.q.States {
			names = append(names, st.String())
		}
		states = "state " + strings.Join(names, ",")
	}
	sel += " · " + states + " · sort " + m.q.Sort.String()
	if m.q.Search != "" {
		sel += " · search " + strconv.Quote(m.q.Search)
	}
	if m.err != nil {
		lines = append(lines, styleError.Render(fit("error: "+m.err.Error(), w)))
	} else {
		lines = append(lines, fit(sel, w))
	}
	return lines
}

// wrap joins tokens into lines of at most w cells.
func wrap(tokens []string, w int) []string {
	var lines []string
	line := ""
	for _, t := range tokens {
		switch {
		case line == "":
			line = t
		case width(line)+2+width(t) <= w:
			line += "  " + t
		default:
			lines = append(lines, fit(line, w))
			line = t
		}
	}
	return append(lines, fit(line, w))
}

// tableRows is how many connections fit under the header.
func (m *Model) tableRows() int {
	return max(0, m.height-len(m.headerLines())-2) // column titles, keys
}

// View draws the screen: exactly height lines of width cells.
func (m *Model) View() string {
	if m.width <= 0 || m.height <= 0 {
		return ""
	}
	var lines []string
	switch m.mode {
	case modeDetail:
		lines = m.detailLines()
	case modeHelp:
		lines = append(m.headerLines(), helpLines(m.width)...)
	default:
		lines = append(m.headerLines(), m.tableLines()...)
	}
	body := m.height - 1
	for len(lines) < body {
		lines = append(lines, "")
	}
	lines = append(lines[:body], m.footer())
	return strings.Join(lines, "\n")
}

func (m *Model) tableLines() []string {
	cols := columns(m.width)
	tw := tableWidth(cols)
	lines := []string{styleHeader.Render(fit(headerRow(cols), m.width))}
	if m.snap == nil {
		return lines
	}
	rows := m.tableRows()
	for i := m.offset; i < len(m.snap.Conns) && i < m.offset+rows; i++ {
		c := &m.snap.Conns[i]
		line := fit(row(cols, c), max(tw, m.width))
		switch {
		case i == m.cursor && c.Stuck:
			line = styleStuckSel.Render(line)
		case i == m.cursor:
			line = styleSelected.Render(line)
		case c.Stuck:
			line = styleStuck.Render(line)
		}
		lines = append(lines, line)
	}
	if len(m.snap.Conns) == 0 {
		lines = append(lines, styleDim.Render(fit("no open connections match", m.width)))
	}
	return lines
}

func (m *Model) footer() string {
	switch m.mode {
	case modeSearch:
		return fit("search (process name, pid or port; enter applies, esc cancels): "+m.search+"█", m.width)
	case modeStates:
		var b []string
		for i, st := range pickStates {
			on := " "
			if containsState(m.q.States, st) {
				on = "*"
			}
			b = append(b, fmt.Sprintf("%d%s%s", (i+1)%10, on, StateName(st.String())))
		}
		return fit("states (digit toggles, a all, enter done): "+strings.Join(b, " "), m.width)
	case modeDetail:
		return styleDim.Render(fit("esc back  p pause  ? keys  q quit", m.width))
	case modeHelp:
		return styleDim.Render(fit("any key: back", m.width))
	}
	return styleDim.Render(fit("q quit  ? keys  s states  o sort  / search  p pause  enter open", m.width))
}

func containsState(states []probe.State, st probe.State) bool {
	for _, s := range states {
		if s == st {
			return true
		}
	}
	return false
}

// helpLines lists the keys.
func helpLines(w int) []string {
	keys := [][2]string{
		{"↑ ↓ j k", "move; PgUp PgDn, Home End (g G) jump"},
		{"enter", "open the connection: its states and their dwell times, and the"},
		{"", "ladder when both ends are on this host"},
		{"s", "pick the states shown: digits toggle one, a shows all"},
		{"o > <", "sort by the next (previous) key: time in state, lifetime, bytes"},
		{"/", "search: a process name (part of it), a pid or a port"},
		{"p space", "pause; again to go on"},
		{"esc", "back from a connection"},
		{"q ctrl+c", "quit"},
		{"", ""},
		{"!", "a stuck connection: in its state longer than the state's threshold"},
		{"≥", "an age tcpfsm cannot know (the connection is older than the"},
		{"", "tracer): at least the time since it was first seen"},
	}
	lines := []string{styleHeader.Render(fit(" keys", w))}
	for _, k := range keys {
		lines = append(lines, fit(fmt.Sprintf("  %-9s %s", k[0], k[1]), w))
	}
	return lines
}

// detailLines draws one connection: what it is, its states with their
// dwell times, and the ladder when its peer is on this host too.
func (m *Model) detailLines() []string {
	w := m.width
	title := fmt.Sprintf("tcpfsm top · connection %d", m.detailID)
	if m.paused {
		title += "  PAUSED"
	}
	lines := []string{styleTitle.Render(fit(title, w))}
	switch {
	case m.detailErr != nil:
		return append(lines, styleError.Render(fit("error: "+m.detailErr.Error(), w)))
	case m.detail == nil:
		return append(lines, fit("reading…", w))
	case !m.detailFound:
		return append(lines, fit("no longer tracked: the connection ended", w))
	}
	d := m.detail
	add := func(format string, args ...any) { lines = append(lines, fit(fmt.Sprintf(format, args...), w)) }
	add("%s %s  %s -> %s  netns %d", d.Role, d.Family, Endpoint(d.Laddr, d.Lport), Endpoint(d.Raddr, d.Rport), d.NetNS)
	if o := d.Owner; o != nil {
		s := fmt.Sprintf("owner: pid %d %s", o.Pid, o.Comm)
		if o.Container != "" {
			s += "  container " + o.Container
		}
		if o.Cgroup != "" {
			s += "  cgroup " + o.Cgroup
		}
		add("%s", s)
	} else {
		add("owner: not seen")
	}
	state := fmt.Sprintf("%s for %s, lifetime %s", d.State, StateAge(&d.Conn), Lifetime(&d.Conn))
	if d.Stuck {
		lines = append(lines, styleStuck.Render(fit(state+"  STUCK", w)))
	} else {
		add("%s", state)
	}
	flags := ""
	if d.Partial {
		flags += " partial (opened before tcpfsm saw it)"
	}
	if d.Seeded {
		flags += " seeded"
	}
	add("sent %s  received %s  srtt %.2f ms  retransmits %d%s", Bytes(d.TxBytes), Bytes(d.RxBytes),
		float64(d.SrttUs)/1000, d.Retransmits, flags)
	lines = append(lines, "")
	lines = append(lines, styleHeader.Render(fit(fmt.Sprintf("%-12s %-14s %s", "STATE", "SINCE", "DWELL"), w)))
	for _, sp := range d.States {
		since, dwell := "before tcpfsm", "unknown"
		if sp.Since != nil {
			since = sp.Since.Local().Format("15:04:05.000")
		}
		if sp.DwellSeconds != nil {
			dwell = Duration(*sp.DwellSeconds)
		}
		if sp.Current {
			dwell += " so far"
			if sp.DwellSeconds == nil {
				dwell = Age(nil, d.StateSecondsAtLeast) + " so far"
			}
		}
		add("%-12s %-14s %s", sp.State, since, dwell)
	}
	if d.Peer != nil {
		a, b := d.Record(), d.Peer.Record()
		ladder := strings.Split(strings.TrimRight(string(text.AppendLadder(nil, &a, &b)), "\n"), "\n")
		lines = append(lines, "", styleHeader.Render(fit(fmt.Sprintf("both ends on this host: the other is connection %d", d.Peer.ID), w)))
		// The ladder's first line names the pair and its close: the title
		// above says it.
		for _, l := range ladder[1:] {
			lines = append(lines, fit(l, w))
		}
	}
	return lines
}
