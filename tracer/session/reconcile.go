package session

import (
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/sockdiag"
)

// Reconciliation, the session's part: every Options.Reconcile, and soon
// after events were lost, the reconciler dumps every TCP socket of every
// namespace the session can reach, on its own goroutine, and hands the
// sockets back in chunks; the session feeds them to the builder as
// recorded inputs between bursts of events (lifecycle/reconcile.go has
// the rules), so the event path never waits for a dump and a replay
// repairs what the live run repaired.
//
// A message from the reconciler is applied in the drain after the one that
// took it: a socket the dump listed after a transition may have had the
// transition's event submitted after the reader last emptied the ring,
// so it is read, and applied, before the socket only at the next drain.
// Applied at once, the socket would correct its record to the state the
// event then enters a second time.
//
// The inputs of one reconciliation: a DumpDone PurposeReconcileBegin per
// namespace, at the time the dumps began (before the first of them); the
// sockets (PurposeReconcile, that same time); per namespace a DumpDone
// PurposeReconcile when its dump was complete, PurposeReconcileAbort
// when it failed.

// reconChunk is how many sockets the session applies at once.
const reconChunk = 4096

type reconRequest struct {
	time uint64
	nss  map[uint32]string // inode -> path
	ids  []uint32          // in the order to dump
}

// reconMsg is a chunk of one namespace's sockets, or its end.
type reconMsg struct {
	netns   uint32
	sockets []lifecycle.Socket
	done    bool // the namespace's dump ended: complete unless failed
	failed  bool
	last    bool // the reconciliation's last message
	// owned: sockets no record held, with the owners /proc told
	// (reconcile_owners.go), and the paths of their cgroups.
	owned   bool
	cgroups map[uint64]string
}

type reconciler struct {
	every time.Duration
	extra map[uint32]string
	next  time.Time // when the next one is due
	busy  bool
	cur   reconRequest
	// held: the messages the last drain took, applied by the next one.
	held  []reconMsg
	f     probe.Filter
	hooks reconHooks
	miss  []bool // holdBack's

	reqs chan reconRequest
	out  chan reconMsg
	quit chan struct{}
	done chan struct{}
}

func newReconciler(every time.Duration, extra map[uint32]string, f probe.Filter, hooks reconHooks) *reconciler {
	r := &reconciler{every: every, extra: extra, f: f, hooks: hooks, next: time.Now().Add(every),
		reqs: make(chan reconRequest), out: make(chan reconMsg, 4), quit: make(chan struct{}), done: make(chan struct{})}
	go r.loop()
	return r
}

func (r *reconciler) close() {
	if r == nil {
		return
	}
	close(r.quit)
	<-r.done
}

// soon makes the next reconciliation due within ReconcileAfterLoss.
func (r *reconciler) soon() {
	if t := time.Now().Add(ReconcileAfterLoss); t.Before(r.next) {
		r.next = t
	}
}

func (r *reconciler) loop() {
	defer close(r.done)
	for {
		var req reconRequest
		select {
		case req = <-r.reqs:
		case <-r.quit:
			return
		}
		for n, ns := range req.ids {
			last := n == len(req.ids)-1
			if !r.dump(req, ns, last) {
				return
			}
		}
	}
}

// dump sends one namespace's sockets in chunks, then its end; false when
// the reconciler is closing.
func (r *reconciler) dump(req reconRequest, ns uint32, last bool) bool {
	send := func(m reconMsg) bool {
		select {
		case r.out <- m:
			return true
		case <-r.quit:
			return false
		}
	}
	d, err := sockdiag.OpenInNetNS(req.nss[ns])
	if err != nil {
		return send(reconMsg{netns: ns, done: true, failed: true, last: last})
	}
	defer d.Close()
	chunk := make([]lifecycle.Socket, 0, reconChunk)
	inodes := make([]uint32, 0, reconChunk)
	var ob ownerBatch
	// A chunk goes without the sockets no record holds: those wait for
	// their owners (reconcile_owners.go).
	flush := func() bool {
		if chunk = r.holdBack(chunk, inodes, &ob); len(chunk) > 0 {
			if !send(reconMsg{netns: ns, sockets: chunk}) {
				return false
			}
			chunk = make([]lifecycle.Socket, 0, reconChunk)
		}
		inodes = inodes[:0]
		return true
	}
	quit := false
	err = d.Dump(sockdiag.AllStates, func(ds *sockdiag.Socket) error {
		if !tupleMatches(&r.f, ds) {
			return nil
		}
		chunk = append(chunk, lifecycle.Socket{Time: req.time, NetNS: ns, ExpiresMs: ds.ExpiresMs, Family: ds.Family,
			State: probe.State(ds.State), TimeWait: ds.TimeWait, Purpose: lifecycle.PurposeReconcile,
			Lport: ds.Sport, Rport: ds.Dport, Laddr: ds.Saddr, Raddr: ds.Daddr})
		inodes = append(inodes, ds.Inode)
		if len(chunk) == reconChunk && !flush() {
			quit = true
			return errQuit
		}
		return nil
	})
	if quit {
		return false
	}
	if err == nil {
		if !flush() {
			return false
		}
		if len(ob.socks) > 0 {
			cgroups := r.owners(&ob)
			for len(ob.socks) > 0 {
				n := min(len(ob.socks), reconChunk)
				if !send(reconMsg{netns: ns, sockets: ob.socks[:n:n], owned: true, cgroups: cgroups}) {
					return false
				}
				ob.socks, cgroups = ob.socks[n:], nil
			}
		}
	}
	return send(reconMsg{netns: ns, done: true, failed: err != nil, last: last})
}

type quitError struct{}

func (quitError) Error() string { return "closing" }

var errQuit error = quitError{}

// reconcile applies what the previous drain took from the reconciler,
// starts a due reconciliation, and takes what the reconciler sent since,
// a few chunks per drain so that events keep flowing.
func (s *Session) reconcile() error {
	r := s.recon
	for i := range r.held {
		if err := s.reconApply(&r.held[i]); err != nil {
			return err
		}
		r.held[i] = reconMsg{}
	}
	r.held = r.held[:0]
	if !r.busy && time.Now().After(r.next) {
		if err := s.startReconcile(); err != nil {
			return err
		}
	}
	for n := 0; r.busy && n < 4; n++ {
		select {
		case m := <-r.out:
			r.held = append(r.held, m)
			if m.last {
				return nil
			}
		default:
			return nil
		}
	}
	return nil
}

// reconApply feeds one message of the reconciler to the builder.
func (s *Session) reconApply(m *reconMsg) error {
	r := s.recon
	if m.owned {
		if err := s.reconOwned(m); err != nil {
			return err
		}
	}
	for i := range m.sockets {
		if err := s.socketInput(&m.sockets[i]); err != nil {
			return err
		}
	}
	if m.done {
		purpose := lifecycle.PurposeReconcile
		if m.failed {
			purpose = lifecycle.PurposeReconcileAbort
		}
		if err := s.dumpDoneInput(m.netns, purpose, r.cur.time); err != nil {
			return err
		}
	}
	if m.last {
		r.busy = false
		r.next = time.Now().Add(r.every)
	}
	return nil
}

// startReconcile begins the dumps of every namespace within reach (the
// filter's only, with one): their begin inputs first, then the request.
func (s *Session) startReconcile() error {
	r := s.recon
	r.next = time.Now().Add(r.every)
	paths, err := namespacePaths(r.extra)
	if err != nil && len(paths) == 0 {
		return nil // tried again at the next interval
	}
	req := reconRequest{time: clock.Monotonic(), nss: paths}
	for ino := range paths {
		if r.f.NetNS == 0 || ino == r.f.NetNS {
			req.ids = append(req.ids, ino)
		}
	}
	if len(req.ids) == 0 {
		return nil
	}
	sortU32(req.ids)
	for _, ns := range req.ids {
		if err := s.dumpDoneInput(ns, lifecycle.PurposeReconcileBegin, req.time); err != nil {
			return err
		}
	}
	r.cur, r.busy = req, true
	r.reqs <- req
	return nil
}

func sortU32(v []uint32) {
	for i := 1; i < len(v); i++ {
		for j := i; j > 0 && v[j] < v[j-1]; j-- {
			v[j], v[j-1] = v[j-1], v[j]
		}
	}
}
