// Package api serves what is open now over HTTP, as JSON: the agent's
//
//	GET /api/v1/connections       open connections (connview.Conn), selected by
//	                              the query parameters of connview.ParseQuery
//	GET /api/v1/connections/{id}  one connection's record so far (connview.Detail)
//	GET /api/v1/summary           counts per state, totals, stuck states (connview.Summary)
//
// A bad parameter is a 400 whose JSON body names it: {"error": "...",
// "parameter": "state"}. Answers are bounded (connview.MaxLimit
// connections), and the builder is locked only while connview copies what
// an answer needs; at most MaxConcurrent answers are read at once, so a
// crowd of clients cannot keep the event path waiting. The server around
// it (TLS, basic auth) is the agent's, the one /metrics has.
package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/tcpfsm/tcpfsm/exporter/connview"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
)

// Paths the API serves.
const (
	ConnectionsPath = "/api/v1/connections"
	SummaryPath     = "/api/v1/summary"
)

// MatchedHeader carries how many connections matched a query, of which
// the answer holds at most its limit.
const MatchedHeader = "X-Tcpfsm-Matched"

// Source is what the API reads.
type Source interface {
	// With runs f with the builder locked (session.Session.With).
	With(f func(b *lifecycle.Builder))
	// Clock maps the builder's timestamps to wall clock time.
	Clock() clock.Clock
}

// Options configure the API.
type Options struct {
	// Thresholds mark connections stuck (Conn.Stuck, ?stuck=true) and make
	// the summary's stuck states.
	Thresholds connview.Thresholds
	// Totals reads the tracer's counters for the summary; nil: zeros.
	Totals func() connview.Totals
	// Now is the monotonic clock ages are measured with; nil:
	// clock.Monotonic.
	Now func() uint64
	// MaxConcurrent bounds the answers read at once (default 2).
	MaxConcurrent int
}

// API is the handlers.
type API struct {
	src  Source
	opts Options
	sem  chan struct{}
}

// New returns the API reading src.
func New(src Source, opts Options) *API {
	if opts.Now == nil {
		opts.Now = clock.Monotonic
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = 2
	}
	return &API{src: src, opts: opts, sem: make(chan struct{}, opts.MaxConcurrent)}
}

// Register adds the API's paths to mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET "+ConnectionsPath, a.connections)
	mux.HandleFunc("GET "+ConnectionsPath+"/{id}", a.connection)
	mux.HandleFunc("GET "+SummaryPath, a.summary)
}

// Error is the body of every answer that is not 200.
type Error struct {
	Error string `json:"error"`
	// Parameter names the query parameter at fault, for a 400.
	Parameter string `json:"parameter,omitempty"`
}

// acquire waits for a reading slot, or for the client to go away.
func (a *API) acquire(r *http.Request) bool {
	select {
	case a.sem <- struct{}{}:
		return true
	case <-r.Context().Done():
		return false
	}
}

func (a *API) release() { <-a.sem }

func (a *API) connections(w http.ResponseWriter, r *http.Request) {
	q, err := connview.ParseQuery(r.URL.Query())
	if err != nil {
		badParam(w, err)
		return
	}
	if !a.acquire(r) {
		return
	}
	var sel connview.Selection
	a.src.With(func(b *lifecycle.Builder) { sel.Select(b, &q, &a.opts.Thresholds, a.opts.Now()) })
	a.release()
	w.Header().Set(MatchedHeader, strconv.Itoa(sel.Matched))
	writeJSON(w, http.StatusOK, sel.Conns(a.src.Clock(), &a.opts.Thresholds))
}

func (a *API) connection(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, Error{Error: "id " + strconv.Quote(r.PathValue("id")) + ": want a connection id", Parameter: "id"})
		return
	}
	if len(r.URL.Query()) > 0 {
		for name := range r.URL.Query() {
			writeJSON(w, http.StatusBadRequest, Error{Error: name + ": unknown parameter (a connection takes none)", Parameter: name})
			return
		}
	}
	if !a.acquire(r) {
		return
	}
	var one connview.One
	a.src.With(func(b *lifecycle.Builder) { one.SelectOne(b, id, a.opts.Now()) })
	a.release()
	if !one.Found {
		writeJSON(w, http.StatusNotFound, Error{Error: "connection " + strconv.FormatUint(id, 10) + " is not tracked: it ended, or was never seen"})
		return
	}
	writeJSON(w, http.StatusOK, one.Detail(a.src.Clock(), &a.opts.Thresholds))
}

func (a *API) summary(w http.ResponseWriter, r *http.Request) {
	for name := range r.URL.Query() {
		writeJSON(w, http.StatusBadRequest, Error{Error: name + ": unknown parameter (the summary takes none)", Parameter: name})
		return
	}
	if !a.acquire(r) {
		return
	}
	var c connview.Counts
	a.src.With(func(b *lifecycle.Builder) { c.Read(b, &a.opts.Thresholds, a.opts.Now()) })
	a.release()
	var totals connview.Totals
	if a.opts.Totals != nil {
		totals = a.opts.Totals()
	}
	writeJSON(w, http.StatusOK, c.Summary(a.src.Clock(), &a.opts.Thresholds, totals))
}

func badParam(w http.ResponseWriter, err error) {
	var pe *connview.ParamError
	if errors.As(err, &pe) {
		writeJSON(w, http.StatusBadRequest, Error{Error: pe.Error(), Parameter: pe.Param})
		return
	}
	writeJSON(w, http.StatusBadRequest, Error{Error: err.Error()})
}

// Marshal is an answer's body: one JSON value and a newline. tcpfsm top
// -o json writes its connections with it, so its output is the API's.
func Marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write(b) // a client gone away has nobody to be told
}
