package metadata

import "time"

// Wait calls fn once with k's metadata: at once when it is known, else
// as soon as a list finds it, or with ok false when the runtime answered
// that it does not know k, when within d nothing was learnt (the runtime
// is slow or away), when MaxWaiters calls are pending already, or at
// Close. fn runs on the resolver's or a timer's goroutine, or the
// caller's when the answer is immediate, and must not block: a record
// that closed before its metadata arrived hands itself over to be logged.
func (r *Resolver) Wait(k Key, d time.Duration, fn func(m Meta, ok bool)) {
	r.mu.Lock()
	e := r.cache.get(k, time.Now(), r.cfg.AbsentTTL)
	switch {
	case e != nil && !e.absent:
		r.st.waitsResolved++
		r.mu.Unlock()
		fn(e.meta, true)
		return
	case e != nil || r.sourceFor(k.Runtime) == nil:
		r.st.waitsUnknown++
		r.mu.Unlock()
		fn(Meta{}, false)
		return
	case r.nwait >= r.cfg.MaxWaiters:
		r.st.waitsDropped++
		r.mu.Unlock()
		fn(Meta{}, false)
		return
	}
	w := &waiter{key: k, fn: fn}
	w.timer = time.AfterFunc(d, func() { r.timeout(w) })
	r.waiters[k] = append(r.waiters[k], w)
	r.nwait++
	r.ask(k)
	r.mu.Unlock()
}

func (r *Resolver) timeout(w *waiter) {
	r.mu.Lock()
	if w.done {
		r.mu.Unlock()
		return
	}
	w.done = true
	r.dropWaiter(w)
	r.st.waitsTimedOut++
	r.mu.Unlock()
	w.fn(Meta{}, false)
}

// dropWaiter removes w from the pending waits; mu held.
func (r *Resolver) dropWaiter(w *waiter) {
	ws := r.waiters[w.key]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(r.waiters, w.key)
	} else {
		r.waiters[w.key] = ws
	}
	r.nwait--
}

// pruneWaiters drops k's answered waits; mu held.
func (r *Resolver) pruneWaiters(k Key) {
	ws := r.waiters[k][:0]
	for _, w := range r.waiters[k] {
		if !w.done {
			ws = append(ws, w)
		}
	}
	if len(ws) == 0 {
		delete(r.waiters, k)
	} else {
		r.waiters[k] = ws
	}
}
