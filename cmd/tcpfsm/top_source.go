package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/tcpfsm/tcpfsm/cmd/tcpfsm/internal/top"
	"github.com/tcpfsm/tcpfsm/exporter/api"
	"github.com/tcpfsm/tcpfsm/exporter/connview"
	"github.com/tcpfsm/tcpfsm/exporter/metrics"
	"github.com/tcpfsm/tcpfsm/internal/buildinfo"
	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/session"
)

// agentSource reads a running agent's API.
type agentSource struct {
	client *api.Client
	name   string
}

func newAgentSource(a *agentClient) (*agentSource, error) {
	u, err := url.Parse(a.url)
	if err != nil {
		return nil, usagef("invalid --agent %q: %v", a.url, err)
	}
	c := &api.Client{Base: u}
	if u.User != nil {
		// Credentials in the URL, as curl takes them; the flags win.
		c.User = u.User.Username()
		c.Password, _ = u.User.Password()
		u.User = nil
	}
	if a.user != "" {
		c.User, c.Password = a.user, ""
	}
	if a.passwordFile != "" {
		f, err := os.Open(a.passwordFile)
		if err != nil {
			return nil, usagef("invalid --agent.password-file: %v", err)
		}
		line, err := bufio.NewReader(io.LimitReader(f, 4096)).ReadString('\n')
		f.Close()
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, usagef("invalid --agent.password-file: %v", err)
		}
		c.Password = strings.TrimRight(line, "\r\n")
	}
	tc := &tls.Config{InsecureSkipVerify: a.insecure}
	if a.caFile != "" {
		pem, err := os.ReadFile(a.caFile)
		if err != nil {
			return nil, usagef("invalid --agent.ca-file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usagef("invalid --agent.ca-file %s: no PEM certificate in it", a.caFile)
		}
		tc.RootCAs = pool
	}
	if a.certFile != "" {
		cert, err := tls.LoadX509KeyPair(a.certFile, a.keyFile)
		if err != nil {
			return nil, usagef("invalid --agent.cert-file or --agent.key-file: %v", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	tr.Proxy = nil // an agent is reached directly
	c.HTTP = &http.Client{Transport: tr, Timeout: 5 * time.Second}
	return &agentSource{client: c, name: "agent " + u.Redacted()}, nil
}

func (s *agentSource) Name() string { return s.name }

func (s *agentSource) Snapshot(q *connview.Query) (top.Snapshot, error) {
	sum, err := s.client.Summary()
	if err != nil {
		return top.Snapshot{}, err
	}
	_, conns, matched, err := s.client.Connections(q)
	if err != nil {
		return top.Snapshot{}, err
	}
	return top.Snapshot{Summary: sum, Conns: conns, Matched: matched}, nil
}

func (s *agentSource) Detail(id uint64) (connview.Detail, bool, error) {
	return s.client.Connection(id)
}

// localSource runs top's own probe: a session whose builder it reads as
// the agent's API does, and metrics for the totals.
type localSource struct {
	sess    *session.Session
	m       *metrics.Metrics
	th      connview.Thresholds
	name    string
	runErr  chan error
	drained chan struct{}
	once    sync.Once
	mu      sync.Mutex
	err     error
}

func openLocalSource(c *topConfig, stderr io.Writer) (*localSource, error) {
	l := &localSource{th: c.stuck, runErr: make(chan error, 1), drained: make(chan struct{})}
	var m *metrics.Metrics
	opts := session.Options{
		Probe:      probe.Options{Filter: c.sel.kernel, Attach: c.attach},
		Lifecycle:  c.lifecycle,
		NetNSPaths: c.sel.netnsPaths(),
		OnEvent:    func(e *probe.Event) { m.Event(e) },
		OnDrained: func() error {
			l.once.Do(func() { close(l.drained) })
			return nil
		},
	}
	m = metrics.New(metrics.Options{}, buildinfo.Get(), func() metrics.Snapshot { return metrics.Snapshot{} })
	opts.Handler = m
	sess, err := session.Open(opts)
	if err != nil {
		return nil, err
	}
	for _, w := range sess.Warnings() {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	l.sess, l.m = sess, m
	l.name = "probe (" + string(sess.Probe().Attached()) + ")"
	go func() { l.runErr <- sess.Run() }()
	// The snapshot of older connections is in the builder; wait for the
	// first drain, so what the kernel queued meanwhile is too.
	select {
	case <-l.drained:
	case <-time.After(2 * time.Second):
	}
	return l, nil
}

func (l *localSource) Name() string { return l.name }

func (l *localSource) failed() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		select {
		case err := <-l.runErr:
			if err == nil {
				err = errors.New("the probe stopped")
			}
			l.err = err
		default:
		}
	}
	return l.err
}

func (l *localSource) Snapshot(q *connview.Query) (top.Snapshot, error) {
	if err := l.failed(); err != nil {
		return top.Snapshot{}, err
	}
	var sel connview.Selection
	var counts connview.Counts
	now := clock.Monotonic()
	l.sess.With(func(b *lifecycle.Builder) {
		sel.Select(b, q, &l.th, now)
		counts.Read(b, &l.th, now)
	})
	clk := l.sess.Clock()
	return top.Snapshot{Summary: counts.Summary(clk, &l.th, l.m.Totals()), Conns: sel.Conns(clk, &l.th), Matched: sel.Matched}, nil
}

func (l *localSource) Detail(id uint64) (connview.Detail, bool, error) {
	if err := l.failed(); err != nil {
		return connview.Detail{}, false, err
	}
	var one connview.One
	l.sess.With(func(b *lifecycle.Builder) { one.SelectOne(b, id, clock.Monotonic()) })
	if !one.Found {
		return connview.Detail{}, false, nil
	}
	return one.Detail(l.sess.Clock(), &l.th), true, nil
}

// stop detaches the probe and waits for the session to end.
func (l *localSource) stop() error {
	// Run's end is the error to return; a link that would not detach
	// is freed by the session's Close.
	_ = l.sess.Stop()
	var err error
	l.mu.Lock()
	if l.err == nil {
		err = <-l.runErr
	}
	l.mu.Unlock()
	l.sess.Close()
	return err
}
