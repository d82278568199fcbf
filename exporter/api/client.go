package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/tcpfsm/tcpfsm/exporter/connview"
)

// Client reads a running agent's API: tcpfsm top --agent.
type Client struct {
	// Base is the agent's URL: scheme, host and port (a path prefix is
	// kept, for an agent behind a proxy).
	Base *url.URL
	// HTTP does the requests (TLS settings, timeout).
	HTTP *http.Client
	// User and Password, when User is set, are sent as basic auth.
	User, Password string
}

// ErrUnauthorized is an agent that wants (other) credentials.
var ErrUnauthorized = errors.New("the agent wants credentials (basic auth): none given, or not accepted")

// Connections asks for the open connections a query selects: the raw
// JSON answer, the connections in it, and how many matched in all.
func (c *Client) Connections(q *connview.Query) (raw []byte, conns []connview.Conn, matched int, err error) {
	raw, h, err := c.get(ConnectionsPath, q.Values())
	if err != nil {
		return nil, nil, 0, err
	}
	if err := json.Unmarshal(raw, &conns); err != nil {
		return nil, nil, 0, fmt.Errorf("%s: %w", ConnectionsPath, err)
	}
	matched, err = strconv.Atoi(h.Get(MatchedHeader))
	if err != nil {
		matched = len(conns)
	}
	return raw, conns, matched, nil
}

// Connection asks for one connection's record so far; found is false when
// the agent no longer tracks it.
func (c *Client) Connection(id uint64) (d connview.Detail, found bool, err error) {
	raw, _, err := c.get(ConnectionsPath+"/"+strconv.FormatUint(id, 10), nil)
	var he *HTTPError
	if errors.As(err, &he) && he.Code == http.StatusNotFound {
		return d, false, nil
	}
	if err != nil {
		return d, false, err
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, false, fmt.Errorf("%s/%d: %w", ConnectionsPath, id, err)
	}
	return d, true, nil
}

// Summary asks for the counts per state, the totals and the stuck states.
func (c *Client) Summary() (connview.Summary, error) {
	var s connview.Summary
	raw, _, err := c.get(SummaryPath, nil)
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return s, fmt.Errorf("%s: %w", SummaryPath, err)
	}
	return s, nil
}

// HTTPError is an answer other than 200, with the agent's message.
type HTTPError struct {
	Code      int
	Msg       string
	Parameter string
}

func (e *HTTPError) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("HTTP %d", e.Code)
	}
	return fmt.Sprintf("HTTP %d: %s", e.Code, e.Msg)
}

// maxAnswer bounds what the client reads: MaxLimit connections are about
// 6 MB.
const maxAnswer = 64 << 20

func (c *Client) get(path string, q url.Values) ([]byte, http.Header, error) {
	u := *c.Base
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawQuery = q.Encode()
	req, err := http.NewRequest("GET", u.String(), nil)
	if err != nil {
		return nil, nil, err
	}
	if c.User != "" {
		req.SetBasicAuth(c.User, c.Password)
	}
	req.Header.Set("Accept", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return body, resp.Header, nil
	case http.StatusUnauthorized:
		return nil, nil, ErrUnauthorized
	}
	he := &HTTPError{Code: resp.StatusCode}
	var e Error
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		he.Msg, he.Parameter = e.Error, e.Parameter
	} else {
		he.Msg = strings.TrimSpace(string(body[:min(len(body), 200)]))
	}
	if resp.StatusCode == http.StatusNotFound && path == ConnectionsPath {
		he.Msg = "no connections API here: is it a tcpfsm agent, of this version or later?"
	}
	return nil, nil, he
}
