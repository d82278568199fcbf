package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// top's command line: bad values exit 2 with one line naming the flag.
func TestTopBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--state", "CLOSE"}, "no open connection is in CLOSE"},
		{[]string{"--state", "FIN_WAIT3"}, "invalid --state"},
		{[]string{"--sort", "pid"}, "invalid --sort"},
		{[]string{"--limit", "0"}, "invalid --limit 0"},
		{[]string{"--limit", "10001"}, "invalid --limit"},
		{[]string{"--interval", "10ms"}, "invalid --interval"},
		{[]string{"--min-age", "0s"}, "invalid --min-age"},
		{[]string{"-o", "yaml"}, "invalid --output"},
		{[]string{"--agent", "127.0.0.1:9465"}, "invalid --agent"},
		{[]string{"--agent", "ftp://h:1"}, "invalid --agent"},
		{[]string{"--agent.user", "me"}, "--agent.user needs --agent"},
		{[]string{"--agent.insecure-skip-verify"}, "needs --agent"},
		{[]string{"--agent", "http://h:1", "--agent.password-file", "/x"}, "--agent.password-file needs --agent.user"},
		{[]string{"--agent", "http://h:1", "--agent.cert-file", "/x"}, "go together"},
		{[]string{"--agent", "https://h:1", "--agent.ca-file", "/no/such/ca.pem", "--once"}, "invalid --agent.ca-file"},
		{[]string{"--stuck.close-wait", "1ms"}, "invalid --stuck.close-wait"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		code, stdout, stderr := runCLI(append([]string{"top"}, c.args...)...)
		checkOneLine(t, strings.Join(c.args, " "), code, stdout, stderr, c.want)
	}
}

// The filters are trace's, and --state means the state a connection is
// in now, TIME_WAIT included.
func TestTopQuery(t *testing.T) {
	c, _, err := parseTop([]string{"-p", "7", "-L", "80,443", "-D", "5432", "-6", "--comm", "nginx",
		"--state", "close_wait,TIME_WAIT", "--min-age", "1m", "--stuck", "--sort", "bytes", "--limit", "50",
		"--stuck.close-wait", "5s", "--stuck.syn-sent", "0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	q := c.query(true)
	if q.Pid != 7 || !slices.Equal(q.LocalPorts, []uint16{80, 443}) || !slices.Equal(q.RemotePorts, []uint16{5432}) ||
		q.Family != probe.AFInet6 || q.Comm != "nginx" || q.MinAge.String() != "1m0s" || !q.Stuck || q.Sort.String() != "bytes" ||
		q.Limit != 50 || !slices.Equal(q.States, []probe.State{probe.StateTimeWait, probe.StateCloseWait}) {
		t.Errorf("query %+v", q)
	}
	if c.stuck[probe.StateCloseWait].String() != "5s" || c.stuck[probe.StateSynSent] != 0 || c.stuck[probe.StateLastAck].String() != "30s" {
		t.Errorf("thresholds %v", c.stuck)
	}
}

// Against an agent that wants credentials, top says so and exits 1; with
// them it prints; a URL's credentials count as the flags'.
func TestTopAgentCredentials(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "me" || p != "s3cret pass" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		// A write to a client gone away fails the client's read, which the
		// test checks.
		switch r.URL.Path {
		case "/api/v1/connections":
			_, _ = w.Write([]byte(`[{"id":5,"role":"passive","family":"ipv4","laddr":"10.0.0.1","lport":80,"raddr":"10.0.0.2",` +
				`"rport":4000,"netns":1,"owner":{"pid":12,"comm":"srv","cgroup_id":0},"state":"CLOSE_WAIT",` +
				`"state_since":null,"state_seconds":null,"state_seconds_at_least":61.5,"first_seen":null,` +
				`"lifetime_seconds":null,"lifetime_seconds_at_least":61.5,"tx_bytes":0,"rx_bytes":0,"srtt_us":0,` +
				`"retransmits":0,"partial":true,"seeded":true,"anomalies":["partial"],"stuck":true}]` + "\n"))
		case "/api/v1/summary":
			_, _ = w.Write([]byte(`{"states":{},"stuck":[]}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	code, stdout, stderr := runCLI("top", "--agent", srv.URL, "--once")
	if code != exitError || stdout != "" || !strings.Contains(stderr, "wants credentials") {
		t.Errorf("without credentials: exit %d, %q %q", code, stdout, stderr)
	}
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret pass\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = runCLI("top", "--agent", srv.URL, "--agent.user", "me", "--agent.password-file", pw, "--once")
	if code != exitOK || !strings.Contains(stdout, "CLOSE_WAIT") || !strings.Contains(stdout, "≥1m01s") {
		t.Errorf("with credentials: exit %d, %q %q", code, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "!") || !strings.Contains(lines[1], "srv") {
		t.Errorf("table %q", stdout)
	}
	withUser := strings.Replace(srv.URL, "http://", "http://me:s3cret%20pass@", 1)
	code, stdout, _ = runCLI("top", "--agent", withUser, "--once", "-o", "json")
	if code != exitOK || !strings.HasPrefix(stdout, `[{"id":5,`) {
		t.Errorf("URL credentials, JSON: exit %d %q", code, stdout)
	}
	code, _, stderr = runCLI("top", "--agent", "http://me:wrong@"+strings.TrimPrefix(srv.URL, "http://"), "--once")
	if code != exitError || !strings.Contains(stderr, "wants credentials") || strings.Contains(stderr, "wrong") {
		t.Errorf("wrong password: exit %d %q (the password must not be printed)", code, stderr)
	}
}
