package top

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"

	"github.com/tcpfsm/tcpfsm/exporter/connview"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// The view's modes: the table, and what a key opens over it.
type mode uint8

const (
	modeTable mode = iota
	modeHelp
	modeStates // picking the states shown
	modeSearch // typing a search
	modeDetail // one connection
)

// pickStates are the states the state picker offers, by key 1-9 and 0.
var pickStates = []probe.State{probe.StateEstablished, probe.StateSynSent, probe.StateSynRecv, probe.StateFinWait1,
	probe.StateFinWait2, probe.StateTimeWait, probe.StateCloseWait, probe.StateLastAck, probe.StateClosing,
	probe.StateListen}

// Model is the live view: Bubble Tea calls Update with keys, sizes and
// readings, and View to draw.
type Model struct {
	src      Source
	interval time.Duration
	q        connview.Query

	width, height int
	mode          mode
	paused        bool
	fetching      bool
	dirty         bool // the query changed while a reading was under way
	err           error

	snap, prev *Snapshot
	rates      rates
	changes    map[string]int

	cursor, offset int
	selected       uint64 // the id under the cursor, kept across readings

	search string // being typed

	detailID       uint64
	detailFetching bool
	detail         *connview.Detail
	detailFound    bool
	detailErr      error
}

type rates struct{ opens, closes, resets, failures float64 }

type tickMsg time.Time

type snapMsg struct {
	snap *Snapshot
	err  error
}

type detailMsg struct {
	id    uint64
	d     *connview.Detail
	found bool
	err   error
}

// New makes the view over src, showing first a reading already made.
func New(src Source, o Options, first *Snapshot) *Model {
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	m := &Model{src: src, interval: o.Interval, q: o.Query, width: 80, height: 24, changes: map[string]int{}}
	if first != nil {
		m.take(first)
	}
	return m
}

// Run shows the view full screen on out, reading keys from in (nil: the
// controlling terminal), until q or Ctrl-C; the terminal is restored then
// (and on a panic).
func Run(src Source, o Options, first *Snapshot, in io.Reader, out io.Writer) error {
	// out is a terminal (the command checked): colors as TERM, COLORTERM
	// and NO_COLOR say, whatever else the environment holds (termenv takes
	// CI=true for no terminal).
	lipgloss.SetColorProfile(termenv.NewOutput(out, termenv.WithTTY(true)).EnvColorProfile())
	input := tea.WithInput(in)
	if in == nil {
		input = tea.WithInputTTY()
	}
	p := tea.NewProgram(New(src, o, first), tea.WithAltScreen(), input, tea.WithOutput(out))
	_, err := p.Run()
	return err
}

// Init starts the clock.
func (m *Model) Init() tea.Cmd { return m.tick() }

func (m *Model) tick() tea.Cmd {
	return tea.Tick(m.interval, func(t time.Time) tea.Msg { return tickMsg(t) })
}

// fetch reads the source in the background, with the query as it is now.
func (m *Model) fetch() tea.Cmd {
	if m.fetching {
		return nil
	}
	m.fetching = true
	q, src := m.q, m.src
	q.States = slices.Clone(q.States)
	return func() tea.Msg {
		s, err := src.Snapshot(&q)
		if err != nil {
			return snapMsg{err: err}
		}
		return snapMsg{snap: &s}
	}
}

func (m *Model) fetchDetail() tea.Cmd {
	if m.detailFetching {
		return nil
	}
	m.detailFetching = true
	id, src := m.detailID, m.src
	return func() tea.Msg {
		d, found, err := src.Detail(id)
		return detailMsg{id: id, d: &d, found: found, err: err}
	}
}

// take makes a reading the one shown: the changes per state and the
// rates since the one before, and the cursor on the connection it was on.
func (m *Model) take(s *Snapshot) {
	m.prev, m.snap = m.snap, s
	clear(m.changes)
	if p := m.prev; p != nil {
		for st, n := range s.Summary.States {
			m.changes[st] = n - p.Summary.States[st]
		}
		if dt := s.Summary.Time.Sub(p.Summary.Time).Seconds(); dt > 0 {
			per := func(a, b uint64) float64 {
				if a < b {
					return 0 // the source restarted
				}
				return float64(a-b) / dt
			}
			t, u := s.Summary.Totals, p.Summary.Totals
			m.rates = rates{per(t.Opened, u.Opened), per(t.Closed, u.Closed), per(t.Resets, u.Resets),
				per(t.ConnectFailures, u.ConnectFailures)}
		}
	}
	m.cursor = 0
	for i := range s.Conns {
		if s.Conns[i].ID == m.selected {
			m.cursor = i
		}
	}
	m.clampCursor()
}

func (m *Model) clampCursor() {
	n := 0
	if m.snap != nil {
		n = len(m.snap.Conns)
	}
	m.cursor = max(0, min(m.cursor, n-1))
	if n > 0 {
		m.selected = m.snap.Conns[m.cursor].ID
	}
	rows := m.tableRows()
	if m.cursor < m.offset {
		m.offset = m.cursor
	}
	if rows > 0 && m.cursor >= m.offset+rows {
		m.offset = m.cursor - rows + 1
	}
	m.offset = max(0, min(m.offset, n-rows))
}

// Update handles a message.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		m.clampCursor()
		return m, nil
	case tickMsg:
		cmds := []tea.Cmd{m.tick()}
		if !m.paused {
			cmds = append(cmds, m.fetch())
			if m.mode == modeDetail {
				cmds = append(cmds, m.fetchDetail())
			}
		}
		return m, tea.Batch(cmds...)
	case snapMsg:
		m.fetching = false
		if m.dirty {
			// Made with the query before its change: read again.
			m.dirty = false
			return m, m.fetch()
		}
		m.err = msg.err
		if msg.snap != nil && !m.paused {
			m.take(msg.snap)
		}
		return m, nil
	case detailMsg:
		m.detailFetching = false
		if msg.id == m.detailID {
			m.detailErr = msg.err
			if msg.err == nil {
				m.detail, m.detailFound = msg.d, msg.found
			}
		}
		return m, nil
	case tea.KeyMsg:
		if msg.Type == tea.KeyRunes && len(msg.Runes) > 1 && !msg.Paste && m.mode != modeSearch {
			// Keys typed faster than read come in one message: each is
			// a key of its own.
			var cmds []tea.Cmd
			for _, r := range msg.Runes {
				_, cmd := m.key(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{r}})
				cmds = append(cmds, cmd)
			}
			return m, tea.Sequence(cmds...)
		}
		return m.key(msg)
	}
	return m, nil
}

func (m *Model) key(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	key := k.String()
	if key == "ctrl+c" {
		return m, tea.Quit
	}
	switch m.mode {
	case modeSearch:
		return m.searchKey(k)
	case modeStates:
		return m.statesKey(key)
	case modeHelp:
		if key == "q" {
			return m, tea.Quit
		}
		m.mode = modeTable
		return m, nil
	case modeDetail:
		switch key {
		case "q":
			return m, tea.Quit
		case "esc", "enter", "backspace", "left", "h":
			m.mode = modeTable
		case "p", " ":
			m.paused = !m.paused
		case "?":
			m.mode = modeHelp
		}
		return m, nil
	}
	switch key {
	case "q":
		return m, tea.Quit
	case "?", "h":
		m.mode = modeHelp
	case "p", " ":
		m.paused = !m.paused
		if !m.paused {
			return m, m.fetch()
		}
	case "s":
		m.mode = modeStates
	case "/":
		m.mode, m.search = modeSearch, m.q.Search
	case "o", ">":
		m.q.Sort = (m.q.Sort + 1) % 3
		return m, m.refetch()
	case "<":
		m.q.Sort = (m.q.Sort + 2) % 3
		return m, m.refetch()
	case "up", "k":
		m.cursor--
	case "down", "j":
		m.cursor++
	case "pgup":
		m.cursor -= max(1, m.tableRows())
	case "pgdown":
		m.cursor += max(1, m.tableRows())
	case "home", "g":
		m.cursor = 0
	case "end", "G":
		m.cursor = 1 << 30
	case "enter":
		if m.snap != nil && len(m.snap.Conns) > 0 {
			m.mode, m.detailID, m.detail, m.detailErr = modeDetail, m.snap.Conns[m.cursor].ID, nil, nil
			return m, m.fetchDetail()
		}
	}
	m.clampCursor()
	return m, nil
}

// refetch reads again at once, with a changed query; the shown reading
// stays until the new one comes.
func (m *Model) refetch() tea.Cmd {
	if m.fetching {
		m.dirty = true
		return nil
	}
	return m.fetch()
}

func (m *Model) searchKey(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	switch k.Type {
	case tea.KeyEnter:
		m.q.Search = strings.TrimSpace(m.search)
		m.mode = modeTable
		return m, m.refetch()
	case tea.KeyEsc:
		m.mode = modeTable
	case tea.KeyBackspace:
		if r := []rune(m.search); len(r) > 0 {
			m.search = string(r[:len(r)-1])
		}
	case tea.KeyRunes, tea.KeySpace:
		if len(m.search) < 64 {
			m.search += string(k.Runes)
		}
	}
	return m, nil
}

func (m *Model) statesKey(key string) (tea.Model, tea.Cmd) {
	switch key {
	case "esc", "enter", "s", "q":
		m.mode = modeTable
		return m, nil
	case "a":
		m.q.States = nil
		return m, m.refetch()
	}
	if len(key) == 1 && key[0] >= '0' && key[0] <= '9' {
		i := int(key[0]-'0') - 1
		if key == "0" {
			i = 9
		}
		st := pickStates[i]
		if j := slices.Index(m.q.States, st); j >= 0 {
			m.q.States = slices.Delete(m.q.States, j, j+1)
		} else {
			m.q.States = append(m.q.States, st)
		}
		return m, m.refetch()
	}
	return m, nil
}

// Query is the selection the view shows now.
func (m *Model) Query() connview.Query { return m.q }

func (m *Model) String() string { return fmt.Sprintf("top(%s)", m.src.Name()) }
