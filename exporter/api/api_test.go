package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"testing"

	"github.com/tcpfsm/tcpfsm/exporter/connview"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

const ms = 1_000_000

type source struct {
	mu sync.Mutex
	b  *lifecycle.Builder
}

func (s *source) With(f func(*lifecycle.Builder)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s.b)
}

func (s *source) Clock() clock.Clock { return clock.Clock{BootNs: 1767225600_000_000_000} }

func state(b *lifecycle.Builder, id uint64, tsMs uint64, lport, rport uint16, old, nw probe.State) {
	e := probe.Event{Type: uint8(probe.TypeState), ConnId: id, TsNs: tsMs * ms, Oldstate: uint8(old), Newstate: uint8(nw),
		Family: probe.AFInet, Netns: 7, Sport: lport, Dport: rport, Owner: uint8(probe.OwnerTask), Pid: 200}
	copy(e.Comm[:], "server")
	copy(e.Saddr[:], []byte{10, 0, 0, 1})
	copy(e.Daddr[:], []byte{10, 0, 0, 2})
	b.Event(&e)
}

// serve runs the API over a builder holding two connections in
// CLOSE_WAIT (ids 2 and 4, since 100 and 200 ms) and one established
// (id 6), measured at 1 s.
func serve(t *testing.T) (*httptest.Server, *Client) {
	b := lifecycle.NewBuilder(lifecycle.Config{}, lifecycle.Handlers(nil))
	for i, at := range []uint64{100, 200, 0} {
		id, port := uint64(2+2*i), uint16(5000+i)
		state(b, id, 10, 80, port, probe.StateListen, probe.StateSynRecv)
		state(b, id, 11, 80, port, probe.StateSynRecv, probe.StateEstablished)
		if at > 0 {
			state(b, id, at, 80, port, probe.StateEstablished, probe.StateCloseWait)
		}
	}
	th := connview.DefaultThresholds()
	th[probe.StateCloseWait] = 850 * 1_000_000
	a := New(&source{b: b}, Options{Thresholds: th, Now: func() uint64 { return 1000 * ms },
		Totals: func() connview.Totals { return connview.Totals{Opened: 3, Resets: 1} }})
	mux := http.NewServeMux()
	a.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return srv, &Client{Base: u, HTTP: srv.Client()}
}

func get(t *testing.T, srv *httptest.Server, path string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body
}

func TestConnections(t *testing.T) {
	srv, c := serve(t)
	code, h, body := get(t, srv, "/api/v1/connections?state=close_wait&limit=1")
	if code != 200 || h.Get("Content-Type") != "application/json" || h.Get(MatchedHeader) != "2" {
		t.Fatalf("%d %v %s", code, h, body)
	}
	var conns []connview.Conn
	if err := json.Unmarshal(body, &conns); err != nil || len(conns) != 1 || conns[0].ID != 2 || !conns[0].Stuck ||
		*conns[0].StateSeconds != 0.9 || conns[0].Owner.Comm != "server" {
		t.Fatalf("%v %s", err, body)
	}
	// The client reads the same.
	q := connview.Query{States: []probe.State{probe.StateCloseWait}, Limit: 1}
	raw, got, matched, err := c.Connections(&q)
	if err != nil || matched != 2 || len(got) != 1 || got[0].ID != 2 || string(raw) != string(body) {
		t.Errorf("client: %v %d %v", err, matched, got)
	}
	// Nothing matched: an empty array, not null.
	if code, _, body := get(t, srv, "/api/v1/connections?port=1"); code != 200 || string(body) != "[]\n" {
		t.Errorf("%d %q", code, body)
	}
}

// A bad parameter is a 400 naming it; the client says so too.
func TestBadParameters(t *testing.T) {
	srv, c := serve(t)
	for _, tc := range []struct{ path, param string }{
		{"/api/v1/connections?state=CLOSED", "state"},
		{"/api/v1/connections?min_age=forever", "min_age"},
		{"/api/v1/connections?limit=100000", "limit"},
		{"/api/v1/connections?sort=name", "sort"},
		{"/api/v1/connections?prot=80", "prot"},
		{"/api/v1/connections/x", "id"},
		{"/api/v1/connections/2?verbose=1", "verbose"},
		{"/api/v1/summary?x=1", "x"},
	} {
		code, h, body := get(t, srv, tc.path)
		var e Error
		if code != http.StatusBadRequest || h.Get("Content-Type") != "application/json" || json.Unmarshal(body, &e) != nil ||
			e.Parameter != tc.param || e.Error == "" {
			t.Errorf("%s: %d %s, want 400 naming %s", tc.path, code, body, tc.param)
		}
	}
	_, _, _, err := c.Connections(&connview.Query{Limit: 100000})
	var he *HTTPError
	if !errors.As(err, &he) || he.Code != http.StatusBadRequest || he.Parameter != "limit" {
		t.Errorf("client, limit too high: %v", err)
	}
	if code, _, _ := get(t, srv, "/api/v1/connections/99"); code != http.StatusNotFound {
		t.Errorf("unknown id: %d", code)
	}
	if _, found, err := c.Connection(99); found || err != nil {
		t.Errorf("client, unknown id: %v %v", found, err)
	}
	resp, err := srv.Client().Post(srv.URL+"/api/v1/connections", "text/plain", nil)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %v", resp.StatusCode)
	}
}

func TestConnectionAndSummary(t *testing.T) {
	_, c := serve(t)
	d, found, err := c.Connection(4)
	if err != nil || !found {
		t.Fatal(err, found)
	}
	var states []string
	for _, s := range d.States {
		states = append(states, s.State)
	}
	if !slices.Equal(states, []string{"SYN_RECV", "ESTABLISHED", "CLOSE_WAIT"}) || !d.States[2].Current ||
		*d.States[2].DwellSeconds != 0.8 || d.Close != nil {
		t.Errorf("%+v", d)
	}
	s, err := c.Summary()
	if err != nil {
		t.Fatal(err)
	}
	if s.States["CLOSE_WAIT"] != 2 || s.States["ESTABLISHED"] != 1 || s.Totals.Opened != 3 || s.Totals.Resets != 1 {
		t.Errorf("%+v", s)
	}
	for _, st := range s.Stuck {
		if st.State == "CLOSE_WAIT" && (st.Count != 2 || st.Stuck != 1 || st.OldestSeconds != 0.9 || st.ThresholdSeconds != 0.85) {
			t.Errorf("%+v", st)
		}
	}
}

// Without the credentials an agent wants, the client says so.
func TestClientUnauthorized(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "me" || p != "pw" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte("[]"))
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	c := &Client{Base: u}
	if _, _, _, err := c.Connections(&connview.Query{}); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("no credentials: %v", err)
	}
	c.User, c.Password = "me", "pw"
	if _, conns, _, err := c.Connections(&connview.Query{}); err != nil || len(conns) != 0 {
		t.Errorf("with credentials: %v", err)
	}
}
