package session

import (
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/sockdiag"
)

// poller dumps time-wait sockets of the namespaces asked for, on its own
// goroutine, so a slow dump never holds up the ring buffer: those of
// reconstructed TIME_WAITs and of orphans in FIN_WAIT2, whose substate
// and timer only a dump shows (lifecycle's orphan.go).
type poller struct {
	every time.Duration
	extra map[uint32]string
	next  time.Time
	busy  bool

	reqs chan []uint32
	res  chan pollResult
	quit chan struct{}
	wg   sync.WaitGroup
}

type pollResult struct {
	time    uint64
	sockets []lifecycle.Socket
	done    []uint32        // namespaces dumped completely
	fin     []time.Duration // their tcp_fin_timeout, 0 when unread
}

// The time-wait states: TIME_WAIT, and FIN_WAIT2 for orphaned connections
// handed to a time-wait socket before the peer's FIN.
const twStates = 1<<probe.StateTimeWait | 1<<probe.StateFinWait2

func newPoller(every time.Duration, extra map[uint32]string) *poller {
	p := &poller{every: every, extra: extra, reqs: make(chan []uint32), res: make(chan pollResult, 1), quit: make(chan struct{})}
	p.wg.Add(1)
	go p.loop()
	return p
}

func (p *poller) due() bool { return !p.busy && time.Now().After(p.next) }

func (p *poller) start(nss []uint32) {
	p.busy = true
	p.next = time.Now().Add(p.every)
	p.reqs <- nss
}

func (p *poller) result() (pollResult, bool) {
	select {
	case r := <-p.res:
		p.busy = false
		return r, true
	default:
		return pollResult{}, false
	}
}

func (p *poller) close() {
	if p == nil {
		return
	}
	close(p.quit)
	p.wg.Wait()
}

func (p *poller) loop() {
	defer p.wg.Done()
	dumpers := map[uint32]*sockdiag.Dumper{}
	// Each namespace's tcp_fin_timeout, opened there with its dumper:
	// how long its orphans wait in FIN_WAIT2, should no dump see them go.
	fins := map[uint32]*sockdiag.Sysctl{}
	paths, _ := namespacePaths(p.extra)
	var lastScan time.Time
	defer func() {
		for _, d := range dumpers {
			d.Close()
		}
		for _, f := range fins {
			f.Close()
		}
	}()
	for {
		var nss []uint32
		select {
		case nss = <-p.reqs:
		case <-p.quit:
			return
		}
		// Namespaces no longer asked for are let go: a held sock_diag
		// socket would keep a dead namespace alive.
		want := map[uint32]bool{}
		for _, ns := range nss {
			want[ns] = true
		}
		for ns, d := range dumpers {
			if !want[ns] {
				d.Close()
				delete(dumpers, ns)
				fins[ns].Close()
				delete(fins, ns)
			}
		}
		res := pollResult{time: clock.Monotonic()}
		for _, ns := range nss {
			d := dumpers[ns]
			if d == nil {
				path, ok := paths[ns]
				if !ok && time.Since(lastScan) > 10*time.Second {
					lastScan = time.Now()
					paths, _ = namespacePaths(p.extra)
					path, ok = paths[ns]
				}
				if !ok {
					continue // out of reach: the builder assumes 60 s
				}
				var err error
				if d, err = sockdiag.OpenInNetNS(path); err != nil {
					delete(paths, ns)
					continue
				}
				dumpers[ns] = d
				if f, err := sockdiag.OpenSysctl(path, sockdiag.FinTimeoutPath); err == nil {
					fins[ns] = f
				}
			}
			err := d.Dump(twStates, func(s *sockdiag.Socket) error {
				if !s.TimeWait {
					return nil
				}
				res.sockets = append(res.sockets, lifecycle.Socket{Time: res.time, NetNS: ns, ExpiresMs: s.ExpiresMs,
					Family: s.Family, State: probe.State(s.State), TimeWait: true, Purpose: lifecycle.PurposeTimeWait,
					Lport: s.Sport, Rport: s.Dport, Laddr: s.Saddr, Raddr: s.Daddr})
				return nil
			})
			if err != nil {
				d.Close()
				delete(dumpers, ns)
				fins[ns].Close()
				delete(fins, ns)
				continue
			}
			var ft time.Duration
			if f := fins[ns]; f != nil {
				ft, _ = f.Seconds()
			}
			res.done = append(res.done, ns)
			res.fin = append(res.fin, ft)
		}
		select {
		case p.res <- res:
		case <-p.quit:
			return
		}
	}
}

// namespacePaths maps network namespace inodes to a path that opens
// them: the tracer's own, those given, those named in /run/netns (ip
// netns), and those processes are in.
func namespacePaths(extra map[uint32]string) (map[uint32]string, error) {
	m := map[uint32]string{}
	add := func(path string) {
		if fi, err := os.Stat(path); err == nil {
			if ino := uint32(statIno(fi)); ino != 0 {
				if _, ok := m[ino]; !ok {
					m[ino] = path
				}
			}
		}
	}
	add("/proc/self/ns/net")
	for ino, path := range extra {
		m[ino] = path
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			add(filepath.Join("/run/netns", e.Name()))
		}
	}
	nss, err := sockdiag.NetNamespaces()
	for _, ns := range nss {
		if _, ok := m[ns.Inode]; !ok {
			m[ns.Inode] = ns.Path
		}
	}
	return m, err
}

func statIno(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
