package main

// tcpfsm top as a person uses it: in a real terminal (tmux), with its
// own probe, keys typed and the screen read; and against an agent with
// basic auth and TLS, its --once output equal to the agent's API.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/tcpfsm/tcpfsm/exporter/connview"
	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// terminal is a tmux server of the test's own, with one 80x24 window
// running a plain shell.
type terminal struct {
	t    *testing.T
	tmux string
	sock string
}

// shellPrompt is the shell's prompt as capture-pane shows it (without
// trailing spaces); PS1 has one.
const shellPrompt = "tcpfsm-test$"

func newTerminal(t *testing.T) *terminal {
	t.Helper()
	term := &terminal{t: t, tmux: needTool(t, "tmux", "tmux"), sock: filepath.Join(t.TempDir(), "tmux.sock")}
	term.run("-f", "/dev/null", "new-session", "-d", "-s", "top", "-x", "80", "-y", "24",
		"env", "PS1="+shellPrompt+" ", "TERM=xterm-256color", "bash", "--norc", "--noprofile")
	// The server may be gone already (its last session ended): nothing to check.
	t.Cleanup(func() { _ = exec.Command(term.tmux, "-S", term.sock, "kill-server").Run() })
	term.run("set-option", "-g", "status", "off")
	term.resize(80, 24)
	term.wait("the shell's prompt", func(s string) bool { return strings.Contains(s, shellPrompt) })
	return term
}

func (term *terminal) run(args ...string) string {
	term.t.Helper()
	out, err := exec.Command(term.tmux, append([]string{"-S", term.sock}, args...)...).CombinedOutput()
	if err != nil {
		term.t.Fatalf("tmux %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func (term *terminal) resize(w, h int) {
	term.t.Helper()
	term.run("resize-window", "-t", "top", "-x", strconv.Itoa(w), "-y", strconv.Itoa(h))
	if got := strings.TrimSpace(term.run("display-message", "-p", "-t", "top", "#{pane_width}x#{pane_height}")); got != fmt.Sprintf("%dx%d", w, h) {
		term.t.Fatalf("pane is %s, want %dx%d", got, w, h)
	}
}

// keys types, as send-keys names them: "q", "Enter", "Escape".
func (term *terminal) keys(keys ...string) {
	term.t.Helper()
	term.run(append([]string{"send-keys", "-t", "top"}, keys...)...)
}

// screen is what the pane shows now; with escapes, its colors too.
func (term *terminal) screen(escapes bool) string {
	term.t.Helper()
	args := []string{"capture-pane", "-p", "-t", "top"}
	if escapes {
		args = append(args, "-e")
	}
	return term.run(args...)
}

// wait polls the screen until cond holds, for at most 15 s.
func (term *terminal) wait(what string, cond func(screen string) bool) string {
	term.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := term.screen(false)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			term.t.Fatalf("waiting for %s: the screen is\n%s", what, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var sgr = regexp.MustCompile(`\x1b\[([0-9;]*)m`)

// redLines reads capture-pane -e's output: each line's text, and whether
// its text starts in red (SGR 31 or 91). tmux writes an attribute only
// where it changes, so the state carries from line to line.
func redLines(colored string) map[string]bool {
	out := map[string]bool{}
	red := false
	apply := func(params string) {
		for _, p := range strings.Split(params, ";") {
			switch p {
			case "", "0", "39":
				red = false
			case "31", "91":
				red = true
			}
		}
	}
	for _, l := range strings.Split(colored, "\n") {
		rest := l
		// The sequences before the text set its start's colour.
		for {
			m := sgr.FindStringSubmatchIndex(rest)
			if m == nil || m[0] != 0 {
				break
			}
			apply(rest[m[2]:m[3]])
			rest = rest[m[1]:]
		}
		out[sgr.ReplaceAllString(l, "")] = red
		for _, m := range sgr.FindAllStringSubmatch(rest, -1) {
			apply(m[1])
		}
	}
	return out
}

// topRow is one line of top's table, as read off the screen.
type topRow struct {
	stuck        bool
	pid          int
	comm         string
	rport        int
	state        string
	inState      float64
	inStateExact bool
	line         string
}

var endpointPort = regexp.MustCompile(`:(\d+)$`)

// topRows reads the table's lines off a screen: those under the column
// titles that hold a state.
func topRows(screen string) []topRow {
	var rows []topRow
	under := false
	for _, l := range strings.Split(screen, "\n") {
		if strings.Contains(l, "PID COMM") {
			under = true
			continue
		}
		f := strings.Fields(l)
		if !under || len(f) < 8 {
			continue
		}
		r := topRow{line: l}
		if f[0] == "!" {
			r.stuck, f = true, f[1:]
		}
		if len(f) < 8 {
			continue
		}
		r.pid, _ = strconv.Atoi(f[0])
		r.comm = f[1]
		if m := endpointPort.FindStringSubmatch(f[3]); m != nil {
			r.rport, _ = strconv.Atoi(m[1])
		}
		r.state = f[4]
		if _, err := probe.ParseState(r.state); err != nil && r.state != "ESTAB" {
			continue // not a connection's line (the keys at the bottom)
		}
		r.inStateExact = !strings.HasPrefix(f[5], "≥")
		r.inState = parseTopDuration(strings.TrimPrefix(f[5], "≥"))
		rows = append(rows, r)
	}
	return rows
}

// parseTopDuration reads what top.Duration writes.
func parseTopDuration(s string) float64 {
	if d, err := time.ParseDuration(s); err == nil {
		return d.Seconds()
	}
	var a, b int
	if _, err := fmt.Sscanf(s, "%dh%dm", &a, &b); err == nil {
		return float64(a*3600 + b*60)
	}
	if _, err := fmt.Sscanf(s, "%dd%dh", &a, &b); err == nil {
		return float64(a*86400 + b*3600)
	}
	return math.NaN()
}

func rowsIn(rows []topRow, state string) []topRow {
	var out []topRow
	for _, r := range rows {
		if r.state == state {
			out = append(out, r)
		}
	}
	return out
}

func rowPorts(rows []topRow) []int {
	var out []int
	for _, r := range rows {
		out = append(out, r.rport)
	}
	return out
}

// tcpfsm top in a real terminal, with its own probe: the CLOSE_WAIT
// connections appear with their ages and marked stuck past the threshold;
// the state filter, a sort key and opening one work as the keys say; it
// follows a resize; q gives the shell its screen back.
func TestTopTerminal(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	term := newTerminal(t)
	term.keys(fmt.Sprintf("%s top --netns %s --stuck.close-wait 2s", bin, ns.Path()), "Enter")
	term.wait("top's screen", func(s string) bool { return strings.Contains(s, "tcpfsm top · probe") })
	if got := strings.TrimSpace(term.run("display-message", "-p", "-t", "top", "#{alternate_on}")); got != "1" {
		t.Errorf("top is not on the alternate screen: alternate_on=%s", got)
	}

	s := newCloseWaitScene(t, ns)
	screen := term.wait("the CLOSE_WAIT connections", func(sc string) bool {
		return len(rowsIn(topRows(sc), "CLOSE_WAIT")) == closeWaitN
	})
	now := time.Now()
	rows := rowsIn(topRows(screen), "CLOSE_WAIT")
	if got := rowPorts(rows); !slices.Equal(got, s.closed) {
		t.Errorf("CLOSE_WAIT rows' remote ports %v, want the clients in the order they closed %v\n%s", got, s.closed, screen)
	}
	for _, r := range rows {
		// The screen is at most a refresh (1 s) old.
		age := now.Sub(s.closedAt[r.rport]).Seconds()
		if r.pid != s.holder.Pid || r.comm != "cwholder" || !r.inStateExact || r.inState > age+0.5 || r.inState < age-1.5 {
			t.Errorf("row %q: pid %d comm %s, %.2f s in CLOSE_WAIT; want the holder's (pid %d), about %.2f s", r.line,
				r.pid, r.comm, r.inState, s.holder.Pid, age)
		}
	}
	if n := len(rowsIn(topRows(screen), "ESTAB")); n != 2*closeWaitOpn {
		t.Errorf("%d ESTAB rows, want %d\n%s", n, 2*closeWaitOpn, screen)
	}
	if !strings.Contains(screen, fmt.Sprintf("CLOSE_WAIT %d", closeWaitN)) {
		t.Errorf("the header does not count %d CLOSE_WAIT\n%s", closeWaitN, screen)
	}

	// Past 2 s in CLOSE_WAIT: stuck, marked and in color.
	screen = term.wait("stuck CLOSE_WAITs", func(sc string) bool {
		rows := rowsIn(topRows(sc), "CLOSE_WAIT")
		return len(rows) == closeWaitN && !slices.ContainsFunc(rows, func(r topRow) bool { return !r.stuck }) &&
			strings.Contains(sc, fmt.Sprintf("stuck: CLOSE_WAIT %d", closeWaitN))
	})
	for line, red := range redLines(term.screen(true)) {
		if strings.Contains(line, "cwholder") && strings.Contains(line, "CLOSE_WAIT") && !red {
			t.Errorf("a stuck row not in red: %q", line)
		}
		if strings.Contains(line, "ESTAB ") && strings.Contains(line, "cwholder") && red {
			t.Errorf("a row in red that is not stuck: %q", line)
		}
	}
	if capture := os.Getenv("TCPFSM_TOP_CAPTURE"); capture != "" {
		// The README's picture, from a real run.
		if err := os.WriteFile(capture, []byte(screen), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("top, 80x24:\n%s", screen)

	// s, 7 (CLOSE_WAIT), enter: only those.
	term.keys("s")
	term.wait("the state picker", func(sc string) bool { return strings.Contains(sc, "digit toggles") })
	term.keys("7", "Enter")
	screen = term.wait("the CLOSE_WAIT filter", func(sc string) bool {
		return strings.Contains(sc, "state CLOSE_WAIT") && len(topRows(sc)) == closeWaitN
	})
	if n := len(rowsIn(topRows(screen), "CLOSE_WAIT")); n != closeWaitN || !strings.Contains(screen, fmt.Sprintf("showing %d of %d", closeWaitN, closeWaitN)) {
		t.Errorf("filtered: %d CLOSE_WAIT rows\n%s", n, screen)
	}

	// o twice: by bytes, the clients that sent more first.
	term.keys("o", "o")
	byBytes := slices.Clone(s.closed)
	slices.Reverse(byBytes)
	term.wait("the sort by bytes", func(sc string) bool {
		return strings.Contains(sc, "sort bytes") && slices.Equal(rowPorts(topRows(sc)), byBytes)
	})

	// Home, enter: the first connection, its states, the ladder with its
	// client.
	term.keys("g", "Enter")
	screen = term.wait("one connection", func(sc string) bool {
		return strings.Contains(sc, "tcpfsm top · connection") && strings.Contains(sc, "so far") && strings.Contains(sc, "both ends on this host")
	})
	for _, want := range []string{"passive ipv4", fmt.Sprintf("owner: pid %d cwholder", s.holder.Pid), "SYN_RECV", "ESTABLISHED",
		"CLOSE_WAIT", "STUCK", "SYN_SENT", "FIN_WAIT1", fmt.Sprintf(":%d", byBytes[0])} {
		if !strings.Contains(screen, want) {
			t.Errorf("the connection's screen has no %q\n%s", want, screen)
		}
	}
	t.Logf("one connection:\n%s", screen)

	// Back, then a larger terminal: the table takes the width.
	term.keys("Escape")
	term.wait("the table again", func(sc string) bool { return strings.Contains(sc, "PID COMM") })
	term.resize(132, 30)
	term.wait("the wider table", func(sc string) bool {
		lines := strings.Split(sc, "\n")
		return strings.Contains(sc, "CONTAINER") && len(lines) >= 30 && width(lines[0]) > 100
	})
	term.resize(80, 24)
	term.wait("80 columns again", func(sc string) bool { return !strings.Contains(sc, "CONTAINER") && strings.Contains(sc, "PID COMM") })

	// q: the shell's screen is back, top exited 0.
	term.keys("q")
	term.wait("the shell", func(sc string) bool {
		return !strings.Contains(sc, "tcpfsm top ·") && strings.Contains(sc, shellPrompt)
	})
	if got := strings.TrimSpace(term.run("display-message", "-p", "-t", "top", "#{alternate_on}")); got != "0" {
		t.Errorf("after q, alternate_on=%s: the alternate screen was not left", got)
	}
	term.keys("echo top-exit=$?", "Enter")
	term.wait("top's exit status", func(sc string) bool { return strings.Contains(sc, "top-exit=0") })
	// The cursor is back where a shell wants it: the next prompt follows.
	term.wait("a prompt after it", func(sc string) bool {
		lines := strings.Split(strings.TrimRight(sc, "\n"), "\n")
		return strings.HasPrefix(lines[len(lines)-1], shellPrompt)
	})
	s.holder.Release(t)
	s.holder.Done(t)
}

func width(s string) int { return len([]rune(s)) }

// tcpfsm top --agent against an agent with basic auth and TLS: without
// credentials it says so and exits 1; with them, --once prints the
// CLOSE_WAIT connections, and -o json is the API's answer for the same
// filters.
func TestTopAgent(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret pass"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, client := selfSigned(t, dir)
	webCfg := filepath.Join(dir, "web.yml")
	if err := os.WriteFile(webCfg, []byte(fmt.Sprintf("basic_auth_users:\n  viewer: %s\ntls_server_config:\n  cert_file: %s\n  key_file: %s\n",
		hash, cert, key)), 0o600); err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(dir, "password")
	if err := os.WriteFile(pw, []byte("s3cret pass\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ns := nettest.NewNS(t)
	a := startAgent(t, bin, agentOptions{client: client, scheme: "https", args: append([]string{"--web.config.file", webCfg,
		"--netns", ns.Path(), "--log.file", filepath.Join(dir, "log")}, small...)})
	s := newCloseWaitScene(t, ns)

	top := func(args ...string) (int, string, string) {
		cmd := exec.Command(bin, append([]string{"top", "--agent", "https://" + a.addr, "--agent.ca-file", cert}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, stdout.String(), stderr.String()
	}
	// No credentials, wrong ones: said, exit 1, nothing printed.
	for _, args := range [][]string{{"--once"}, {"--once", "--agent.user", "viewer"}} {
		code, stdout, stderr := top(args...)
		if code != exitError || stdout != "" || !strings.Contains(stderr, "wants credentials") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
	// No CA: the certificate is not trusted.
	if code, _, stderr := func() (int, string, string) {
		cmd := exec.Command(bin, "top", "--agent", "https://"+a.addr, "--once")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), "", string(out)
		}
		return 0, "", string(out)
	}(); code != exitError || !strings.Contains(stderr, "certificate") {
		t.Errorf("without --agent.ca-file: exit %d %q", code, stderr)
	}

	creds := []string{"--agent.user", "viewer", "--agent.password-file", pw}
	var rows []topRow
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, stdout, stderr := top(append(creds, "--once", "--state", "CLOSE_WAIT")...)
		if code != 0 {
			t.Fatalf("with credentials: exit %d %s", code, stderr)
		}
		rows = topRows(stdout)
		if len(rows) == closeWaitN || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := rowPorts(rows); !slices.Equal(got, s.closed) {
		t.Fatalf("top --agent --once: remote ports %v, want %v", got, s.closed)
	}
	for _, r := range rows {
		if r.pid != s.holder.Pid || r.comm != "cwholder" || r.state != "CLOSE_WAIT" {
			t.Errorf("row %q", r.line)
		}
	}

	// -o json is the API's answer for the same filters: the same
	// connections in the same order, every field equal but the ages,
	// which moved on by the time between the two.
	code, stdout, stderr := top(append(creds, "--once", "-o", "json", "--state", "close_wait", "--sort", "bytes", "--lport", strconv.Itoa(s.port))...)
	if code != 0 {
		t.Fatalf("-o json: exit %d %s", code, stderr)
	}
	_, body := a.get(t, "/api/v1/connections?state=CLOSE_WAIT&sort=bytes&lport="+strconv.Itoa(s.port), "viewer", "s3cret pass")
	var fromTop, fromAPI []connview.Conn
	if err := json.Unmarshal([]byte(stdout), &fromTop); err != nil {
		t.Fatalf("top -o json: %v: %q", err, stdout)
	}
	if err := json.Unmarshal(body, &fromAPI); err != nil {
		t.Fatal(err)
	}
	if len(fromTop) != closeWaitN || len(fromAPI) != closeWaitN {
		t.Fatalf("top %d, API %d connections", len(fromTop), len(fromAPI))
	}
	for i := range fromAPI {
		x, y := fromTop[i], fromAPI[i]
		if math.Abs(x.StateSecondsAtLeast-y.StateSecondsAtLeast) > 1 || math.Abs(x.LifetimeSecondsAtLeast-y.LifetimeSecondsAtLeast) > 1 {
			t.Errorf("#%d: ages %v/%v and %v/%v", i, x.StateSecondsAtLeast, x.LifetimeSecondsAtLeast, y.StateSecondsAtLeast, y.LifetimeSecondsAtLeast)
		}
		for _, c := range []*connview.Conn{&x, &y} {
			c.StateSeconds, c.StateSecondsAtLeast, c.LifetimeSeconds, c.LifetimeSecondsAtLeast = nil, 0, nil, 0
		}
		xb, _ := json.Marshal(x)
		yb, _ := json.Marshal(y)
		if !bytes.Equal(xb, yb) {
			t.Errorf("#%d:\ntop %s\nAPI %s", i, xb, yb)
		}
	}
	s.holder.Release(t)
	s.holder.Done(t)
}
