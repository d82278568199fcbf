package metadata

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Source is one runtime's API: a CRI runtime (package cri) or a Docker
// Engine compatible one (package engine).
type Source interface {
	// Runtime is the cgroups.Runtime* whose containers the source knows;
	// it may change once the source has talked to the runtime (a socket
	// that turns out to be CRI-O's, or podman's behind docker.sock).
	Runtime() string
	// Endpoint is where the source connects, for messages.
	Endpoint() string
	// List returns every container and pod sandbox the runtime knows,
	// exited ones included. Errors should carry a Reason (Errorf) where
	// ReasonOf cannot tell it from the chain.
	List(ctx context.Context) ([]Meta, error)
	Close() error
}

// Config bounds the resolver. Zero values take the defaults.
type Config struct {
	// MaxEntries bounds the cache (default 4096); the least recently used
	// entry is evicted, and counted.
	MaxEntries int
	// TTL is how long a container stays named after the runtime stopped
	// listing it (default 5m): late records of a removed container.
	TTL time.Duration
	// AbsentTTL is how long an id the runtime did not know is not asked
	// about again (default 30s).
	AbsentTTL time.Duration
	// MinRefreshInterval is the least time between two lists that
	// unknown ids cause (default 1s); the misses in between share one.
	MinRefreshInterval time.Duration
	// ResyncInterval is how often the runtime is listed anyway, to notice
	// removed containers (default 1m; negative: never).
	ResyncInterval time.Duration
	// CallTimeout bounds one list (default 5s).
	CallTimeout time.Duration
	// MinBackoff and MaxBackoff space the retries while a runtime fails
	// (defaults 500ms and 30s, doubling).
	MinBackoff, MaxBackoff time.Duration
	// MaxWaiters bounds the pending Wait calls (default 4096); beyond it
	// Wait answers at once, unknown, and counts it.
	MaxWaiters int
	// Logger gets a warning the first time each kind of failure happens
	// (again after the runtime came back), and an info when it is back.
	// nil: no logs.
	Logger *slog.Logger
}

func (c *Config) defaults() {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.MaxEntries <= 0 {
		c.MaxEntries = 4096
	}
	if c.MaxWaiters <= 0 {
		c.MaxWaiters = 4096
	}
	set(&c.TTL, 5*time.Minute)
	set(&c.AbsentTTL, 30*time.Second)
	set(&c.MinRefreshInterval, time.Second)
	set(&c.ResyncInterval, time.Minute)
	set(&c.CallTimeout, 5*time.Second)
	set(&c.MinBackoff, 500*time.Millisecond)
	set(&c.MaxBackoff, 30*time.Second)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// maxPending bounds the ids remembered between two lists of a source to
// mark the ones the runtime did not know.
const maxPending = 4096

// Resolver maps containers to their metadata. Lookup never waits: the
// runtimes are asked by one goroutine per source, which lists everything
// at start, again at most every MinRefreshInterval when an unknown id was
// looked up, and every ResyncInterval; a failing runtime is retried with
// backoff while what is cached keeps being served. Safe for concurrent
// use.
type Resolver struct {
	cfg    Config
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	cache   *cache
	sources []*source
	waiters map[Key][]*waiter
	nwait   int
	ips     map[*source]map[netip.Addr]Meta
	ipGen   uint64 // changes when ips does
	st      counters
}

type source struct {
	Source
	kick   chan struct{}
	synced chan struct{} // closed after the first list, success or not

	// under Resolver.mu
	pending  map[Key]struct{} // looked up and missed since the running list started
	inflight map[Key]struct{} // the running list's: it will answer them
	gen      uint64
	up       bool
	tried    bool
	warned   [NumReasons]bool
	stats    SourceStats
	lastList time.Time
}

type waiter struct {
	key   Key
	fn    func(Meta, bool)
	timer *time.Timer
	done  bool
}

type counters struct {
	lookups, hits, misses                                    uint64
	waitsResolved, waitsTimedOut, waitsUnknown, waitsDropped uint64
}

// New starts resolving with the given sources (Discover finds them); it
// lists each at once. Close stops it.
func New(cfg Config, sources ...Source) *Resolver {
	cfg.defaults()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Resolver{
		cfg: cfg, cancel: cancel,
		cache:   newCache(cfg.MaxEntries, cfg.TTL),
		waiters: map[Key][]*waiter{},
		ips:     map[*source]map[netip.Addr]Meta{},
	}
	for _, s := range sources {
		src := &source{Source: s, kick: make(chan struct{}, 1), synced: make(chan struct{}), pending: map[Key]struct{}{}}
		src.stats.Endpoint = s.Endpoint()
		r.sources = append(r.sources, src)
		r.wg.Add(1)
		go r.run(ctx, src)
	}
	return r
}

// Close stops the sources' goroutines, answers pending waits as unknown
// and closes the sources.
func (r *Resolver) Close() error {
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	var fns []func(Meta, bool)
	for k, ws := range r.waiters {
		for _, w := range ws {
			if w.timer.Stop() && !w.done {
				w.done = true
				r.st.waitsUnknown++
				fns = append(fns, w.fn)
			}
		}
		delete(r.waiters, k)
	}
	r.nwait = 0
	r.mu.Unlock()
	for _, fn := range fns {
		fn(Meta{}, false)
	}
	var err error
	for _, s := range r.sources {
		if e := s.Close(); e != nil && err == nil {
			err = e
		}
	}
	return err
}

// WaitSynced waits until every source has been listed once, or failed
// to be, or ctx ends: a command that starts can wait for it, briefly,
// before its first record.
func (r *Resolver) WaitSynced(ctx context.Context) error {
	for _, s := range r.sources {
		select {
		case <-s.synced:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Lookup returns what is known about a container now. It never waits on
// a runtime: an id not known yet is asked about in the background (the
// next Lookup or a Wait gets the answer). It does not allocate on a hit.
func (r *Resolver) Lookup(k Key) (Meta, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.lookups++
	e := r.cache.get(k, time.Now(), r.cfg.AbsentTTL)
	if e != nil && !e.absent {
		r.st.hits++
		return e.meta, true
	}
	r.st.misses++
	if e == nil {
		r.ask(k)
	}
	return Meta{}, false
}

// ask makes the source for k's runtime list soon; mu held.
func (r *Resolver) ask(k Key) bool {
	s := r.sourceFor(k.Runtime)
	if s == nil {
		return false
	}
	if _, ok := s.inflight[k]; ok {
		return true // the running list answers it
	}
	if _, ok := s.pending[k]; ok {
		return true // asked for already
	}
	if len(s.pending) < maxPending {
		s.pending[k] = struct{}{}
	}
	select {
	case s.kick <- struct{}{}:
	default: // a list is asked for already: this miss shares it
	}
	return true
}

func (r *Resolver) sourceFor(runtime string) *source {
	for _, s := range r.sources {
		if s.Runtime() == runtime {
			return s
		}
	}
	return nil
}

// LookupIP names the pod whose sandbox has this IP, for a peer on this
// node: the sandbox's Meta (Sandbox true). Host-network pods have none.
func (r *Resolver) LookupIP(ip netip.Addr) (Meta, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.ips {
		if p, ok := m[ip.Unmap()]; ok {
			return p, true
		}
	}
	return Meta{}, false
}

// PodIPs returns the pod sandboxes on this node that have an IP, sorted
// by IP, with a generation that changes whenever they do; when gen is
// the generation already, it returns it and nil, without allocating: a
// caller polls it cheaply and copies the set only when it changed.
func (r *Resolver) PodIPs(gen uint64) (uint64, []Meta) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if gen == r.ipGen {
		return gen, nil
	}
	out := []Meta{}
	for _, m := range r.ips {
		for _, p := range m {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b Meta) int { return a.Pod.IP.Compare(b.Pod.IP) })
	return r.ipGen, out
}

func sameIPs(a, b map[netip.Addr]Meta) bool {
	if len(a) != len(b) {
		return false
	}
	for ip, m := range a {
		if n, ok := b[ip]; !ok || n.ID != m.ID {
			return false
		}
	}
	return true
}

// Known returns every container the cache holds and its runtime still
// listed at its last list, sandboxes included: for turning a namespace,
// pod or workload filter into the set of pod cgroups.
func (r *Resolver) Known() []Meta {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Meta
	for el := r.cache.lru.Front(); el != nil; el = el.Next() {
		if e := el.Value.(*entry); !e.absent && e.goneAt.IsZero() {
			out = append(out, e.meta)
		}
	}
	return out
}

// run is a source's loop: list now, then on asks (no more often than
// MinRefreshInterval), every ResyncInterval, and after a failure with
// backoff.
func (r *Resolver) run(ctx context.Context, s *source) {
	defer r.wg.Done()
	var backoff time.Duration
	next := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		timer.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
			r.mu.Lock()
			up, last := s.up, s.lastList
			r.mu.Unlock()
			// While the runtime fails, the backoff decides.
			if soon := last.Add(r.cfg.MinRefreshInterval); up && soon.Before(next) {
				next = soon
			}
			continue // Reset at the top: since Go 1.23 no stale tick is left to drain
		case <-timer.C:
		}
		if err := r.list(ctx, s); err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, r.cfg.MinBackoff), r.cfg.MaxBackoff)
			next = time.Now().Add(backoff)
			continue
		}
		backoff = 0
		next = time.Now().Add(r.cfg.ResyncInterval)
		if r.cfg.ResyncInterval < 0 {
			next = time.Now().Add(24 * 365 * time.Hour)
		}
	}
}

// list asks the runtime for everything and applies the answer.
func (r *Resolver) list(ctx context.Context, s *source) error {
	r.mu.Lock()
	asked := s.pending
	s.pending = map[Key]struct{}{}
	s.inflight = asked
	s.lastList = time.Now()
	r.mu.Unlock()

	lctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
	metas, err := s.List(lctx)
	cancel()
	now := time.Now()

	r.mu.Lock()
	s.inflight = nil
	first := !s.tried
	s.tried = true
	if err != nil {
		for k := range asked { // ask again when the runtime is back
			if len(s.pending) < maxPending {
				s.pending[k] = struct{}{}
			}
		}
		r.failed(s, err)
		r.mu.Unlock()
		if first {
			close(s.synced)
		}
		return err
	}
	if !s.up && s.stats.Lists > 0 {
		r.cfg.Logger.Info("container metadata: runtime is back", "runtime", s.Runtime(), "endpoint", s.Endpoint())
	}
	s.up = true
	s.warned = [NumReasons]bool{}
	s.stats.Lists++
	s.stats.LastList = now
	s.gen++
	ips := map[netip.Addr]Meta{}
	runtime := s.Runtime()
	for _, m := range metas {
		m.Runtime = runtime
		r.cache.put(m, s.gen)
		if m.Sandbox && m.Pod.IP.IsValid() {
			ips[m.Pod.IP.Unmap()] = m
		}
	}
	if !sameIPs(r.ips[s], ips) {
		r.ipGen++
	}
	r.ips[s] = ips
	r.cache.listed(runtime, s.gen, now, r.cfg.AbsentTTL)
	var fire []func()
	for k := range asked {
		if k.Runtime != runtime {
			continue
		}
		e := r.cache.get(k, now, r.cfg.AbsentTTL)
		if e == nil {
			r.cache.putAbsent(k, now)
		}
		for _, w := range r.waiters[k] {
			if !w.timer.Stop() || w.done {
				continue // its timeout runs
			}
			w.done = true
			r.nwait--
			fn := w.fn
			if e != nil && !e.absent {
				r.st.waitsResolved++
				m := e.meta
				fire = append(fire, func() { fn(m, true) })
			} else {
				r.st.waitsUnknown++
				fire = append(fire, func() { fn(Meta{}, false) })
			}
		}
		r.pruneWaiters(k)
	}
	r.mu.Unlock()
	for _, f := range fire {
		f()
	}
	if first {
		close(s.synced)
	}
	return nil
}

// failed counts a source's failure and warns the first time of its kind;
// mu held.
func (r *Resolver) failed(s *source, err error) {
	reason := ReasonOf(err)
	s.up = false
	s.stats.Errors[reason]++
	if !s.warned[reason] {
		s.warned[reason] = true
		r.cfg.Logger.Warn("container metadata unavailable; records keep container ids",
			"runtime", s.Runtime(), "endpoint", s.Endpoint(), "reason", reason.String(), "err", err)
	} else {
		r.cfg.Logger.Debug("container metadata unavailable", "runtime", s.Runtime(), "reason", reason.String(), "err", err)
	}
}
