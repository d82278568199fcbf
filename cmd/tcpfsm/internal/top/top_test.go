package top

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"

	"github.com/tcpfsm/tcpfsm/exporter/connview"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// fake is a source that answers from fixed connections, and records the
// queries it was asked.
type fake struct {
	conns   []connview.Conn
	queries []connview.Query
	at      time.Time
	opened  uint64
}

func (f *fake) Name() string { return "fake" }

func (f *fake) Snapshot(q *connview.Query) (Snapshot, error) {
	f.queries = append(f.queries, *q)
	f.at = f.at.Add(time.Second)
	f.opened += 3
	var out []connview.Conn
	for _, c := range f.conns {
		st, _ := probe.ParseState(c.State)
		if len(q.States) > 0 && !slices.Contains(q.States, st) {
			continue
		}
		if q.Search != "" && (c.Owner == nil || !strings.Contains(c.Owner.Comm, q.Search)) {
			continue
		}
		out = append(out, c)
	}
	n := 0
	for _, c := range f.conns {
		if c.State == "CLOSE_WAIT" {
			n++
		}
	}
	return Snapshot{Conns: out, Matched: len(out), Summary: connview.Summary{Time: f.at,
		States: map[string]int{"CLOSE_WAIT": n, "ESTABLISHED": len(f.conns) - n}, Totals: connview.Totals{Opened: f.opened},
		Stuck: []connview.StuckState{{State: "CLOSE_WAIT", ThresholdSeconds: 60, Count: n, Stuck: n, OldestSeconds: 75}}}}, nil
}

func (f *fake) Detail(id uint64) (connview.Detail, bool, error) {
	for _, c := range f.conns {
		if c.ID == id {
			since := f.at.Add(-75 * time.Second)
			return connview.Detail{Conn: c, States: []connview.StateSpan{
				{State: "ESTABLISHED", Since: &since, DwellSeconds: ptr(2.0)},
				{State: "CLOSE_WAIT", DwellSeconds: c.StateSeconds, Current: true},
			}}, true, nil
		}
	}
	return connview.Detail{}, false, nil
}

func ptr[T any](v T) *T { return &v }

func fakeConns() *fake {
	f := &fake{at: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	for i := 0; i < 40; i++ {
		c := connview.Conn{ID: uint64(i + 1), Role: "passive", Family: "ipv4", Laddr: "127.0.0.1", Lport: 8080,
			Raddr: "127.0.0.1", Rport: uint16(40000 + i), State: "ESTABLISHED", StateSeconds: ptr(float64(i)),
			StateSecondsAtLeast: float64(i), LifetimeSeconds: ptr(float64(i) + 1), LifetimeSecondsAtLeast: float64(i) + 1,
			Owner: &connview.Owner{Pid: 4242, Comm: "webserver", Container: "containerd:0123456789abcdef0123"}}
		if i%4 == 0 {
			c.State, c.Stuck = "CLOSE_WAIT", true
		}
		if i == 39 {
			// Older than the tracer: its age is a lower bound.
			c.StateSeconds, c.LifetimeSeconds, c.Seeded = nil, nil, true
		}
		f.conns = append(f.conns, c)
	}
	return f
}

func keys(m *Model, ks ...string) {
	for _, k := range ks {
		var msg tea.KeyMsg
		switch k {
		case "enter":
			msg = tea.KeyMsg{Type: tea.KeyEnter}
		case "esc":
			msg = tea.KeyMsg{Type: tea.KeyEsc}
		case "down":
			msg = tea.KeyMsg{Type: tea.KeyDown}
		case "backspace":
			msg = tea.KeyMsg{Type: tea.KeyBackspace}
		default:
			msg = tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(k)}
		}
		_, cmd := m.Update(msg)
		run(m, cmd)
	}
}

// run executes a command's messages synchronously (no ticks).
func run(m *Model, cmd tea.Cmd) {
	if cmd == nil {
		return
	}
	switch msg := cmd().(type) {
	case tea.BatchMsg:
		for _, c := range msg {
			run(m, c)
		}
	case tickMsg, nil:
	default:
		_, next := m.Update(msg)
		run(m, next)
	}
}

// checkScreen holds the screen to its size: height lines, none wider
// than the terminal.
func checkScreen(t *testing.T, m *Model) []string {
	t.Helper()
	lines := strings.Split(m.View(), "\n")
	if len(lines) != m.height {
		t.Fatalf("%d lines on a %d-line terminal", len(lines), m.height)
	}
	for i, l := range lines {
		if w := ansi.StringWidth(l); w > m.width {
			t.Errorf("line %d is %d wide on a %d-column terminal: %q", i, w, m.width, ansi.Strip(l))
		}
	}
	for i := range lines {
		lines[i] = ansi.Strip(lines[i])
	}
	return lines
}

func screen(lines []string) string { return strings.Join(lines, "\n") }

func TestView(t *testing.T) {
	f := fakeConns()
	first, _ := f.Snapshot(&connview.Query{})
	m := New(f, Options{}, &first)
	for _, size := range [][2]int{{80, 24}, {120, 40}, {200, 60}, {40, 10}} {
		m.Update(tea.WindowSizeMsg{Width: size[0], Height: size[1]})
		lines := checkScreen(t, m)
		if size[0] < 80 {
			continue
		}
		s := screen(lines)
		for _, want := range []string{"tcpfsm top · fake", "CLOSE_WAIT 10", "stuck: CLOSE_WAIT 10 (>1m00s, oldest 1m15s)",
			"showing 40 of 40", "PID COMM", "STATE", "IN STATE", "LIFETIME", "q quit"} {
			if !strings.Contains(s, want) {
				t.Errorf("%dx%d: no %q in\n%s", size[0], size[1], want, s)
			}
		}
		// The first row: the first connection, marked stuck.
		row := lines[len(m.headerLines())+1]
		if !strings.HasPrefix(row, "!") || !strings.Contains(row, "4242") || !strings.Contains(row, "CLOSE_WAIT") {
			t.Errorf("%dx%d: first row %q", size[0], size[1], row)
		}
		if size[0] >= 120 != strings.Contains(s, "CONTAINER") {
			t.Errorf("%dx%d: container column shown: %v", size[0], size[1], strings.Contains(s, "CONTAINER"))
		}
	}
	// Scrolled to the end, the connection older than the tracer shows
	// its lower bound.
	m.Update(tea.WindowSizeMsg{Width: 80, Height: 24})
	keys(m, "G")
	if s := screen(checkScreen(t, m)); !strings.Contains(s, "≥39.0s") || !strings.Contains(s, "≥40.0s") {
		t.Errorf("no lower bounds:\n%s", s)
	}
}

func TestKeys(t *testing.T) {
	f := fakeConns()
	first, _ := f.Snapshot(&connview.Query{})
	m := New(f, Options{}, &first)
	m.Update(tea.WindowSizeMsg{Width: 80, Height: 24})
	// The state picker: 7 is CLOSE_WAIT.
	keys(m, "s", "7", "enter")
	if q := f.queries[len(f.queries)-1]; !slices.Equal(q.States, []probe.State{probe.StateCloseWait}) {
		t.Fatalf("query after s 7: %+v", q)
	}
	s := screen(checkScreen(t, m))
	if !strings.Contains(s, "showing 10 of 10 · state CLOSE_WAIT") || strings.Contains(s, "ESTAB ") && strings.Contains(s, "ESTAB       ") {
		t.Errorf("state filter:\n%s", s)
	}
	// Sort: age, lifetime, bytes, age.
	for _, want := range []connview.Sort{connview.SortLifetime, connview.SortBytes, connview.SortAge} {
		keys(m, "o")
		if got := f.queries[len(f.queries)-1].Sort; got != want {
			t.Errorf("sort %s, want %s", got, want)
		}
	}
	// Two keys read at once are two keys.
	keys(m, "oo")
	if !strings.Contains(screen(checkScreen(t, m)), "sort bytes") {
		t.Error("the sort is not shown")
	}
	keys(m, "oo")
	// Search.
	keys(m, "s", "a", "esc", "/", "w", "e", "b", "x", "backspace", "enter")
	if q := f.queries[len(f.queries)-1]; q.Search != "web" || len(q.States) != 0 {
		t.Errorf("search: %+v", q)
	}
	// Pause: no reading while paused.
	keys(m, "p")
	n := len(f.queries)
	m.Update(tickMsg(time.Now()))
	if len(f.queries) != n || !strings.Contains(screen(checkScreen(t, m)), "PAUSED") {
		t.Error("paused but read")
	}
	keys(m, "p")
	// Open the second connection: its states.
	keys(m, "down", "enter")
	s = screen(checkScreen(t, m))
	if !strings.Contains(s, "connection 2") || !strings.Contains(s, "ESTABLISHED") || !strings.Contains(s, "so far") ||
		!strings.Contains(s, "owner: pid 4242 webserver") {
		t.Errorf("detail:\n%s", s)
	}
	keys(m, "esc")
	if m.mode != modeTable {
		t.Error("esc did not go back")
	}
	keys(m, "?")
	if s := screen(checkScreen(t, m)); !strings.Contains(s, "keys") || !strings.Contains(s, "≥") || strings.Contains(s, "…") {
		t.Errorf("help:\n%s", s)
	}
	keys(m, "x")
	_, cmd := m.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("q")})
	if cmd == nil || fmt.Sprint(cmd()) != fmt.Sprint(tea.Quit()) {
		t.Error("q does not quit")
	}
}

func TestFormat(t *testing.T) {
	for s, want := range map[float64]string{0.000042: "42µs", 0.0015: "1.5ms", 0.31: "310ms", 4.213: "4.21s",
		12.34: "12.3s", 302: "5m02s", 11100: "3h05m", 183600: "2d03h"} {
		if got := Duration(s); got != want {
			t.Errorf("Duration(%v) = %q, want %q", s, got, want)
		}
	}
	for n, want := range map[uint64]string{0: "0", 999: "999", 1024: "1.0K", 35 << 20: "35M", 5 << 30: "5.0G"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
	if got := Age(nil, 61); got != "≥1m01s" {
		t.Errorf("Age(nil, 61) = %q", got)
	}
	if got := fitLeftCut("127.0.0.1:40001", 12); got != "…0.0.1:40001" {
		t.Errorf("fitLeftCut %q", got)
	}
	if got := Endpoint("::1", 80); got != "[::1]:80" {
		t.Errorf("Endpoint %q", got)
	}
}

func TestWriteTable(t *testing.T) {
	f := fakeConns()
	var b strings.Builder
	if err := WriteTable(&b, f.conns[:2]); err != nil {
		t.Fatal(err)
	}
	want := "      PID COMM            LOCAL          REMOTE          STATE      IN STATE LIFETIME BYTES CONTAINER\n" +
		"!    4242 webserver       127.0.0.1:8080 127.0.0.1:40000 CLOSE_WAIT       0s    1.00s     0 containerd:0123456789ab\n" +
		"     4242 webserver       127.0.0.1:8080 127.0.0.1:40001 ESTAB         1.00s    2.00s     0 containerd:0123456789ab\n"
	if b.String() != want {
		t.Errorf("got\n%swant\n%s", b.String(), want)
	}
}
