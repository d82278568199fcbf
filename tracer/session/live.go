package session

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

// MetaResolver is what a live session asks about containers;
// *metadata.Resolver is one. Lookup and PodIPs must not wait; Wait calls
// back once, from any goroutine, and must not call back while the caller
// holds anything the callback needs.
type MetaResolver interface {
	Lookup(k metadata.Key) (metadata.Meta, bool)
	Wait(k metadata.Key, d time.Duration, fn func(m metadata.Meta, ok bool))
	PodIPs(gen uint64) (uint64, []metadata.Meta)
}

// liveMeta turns the runtime's answers into KindMeta inputs: the stage
// asks (on the session's goroutine, with its lock held), the answers
// queue here (from the resolver's goroutines too), and the session writes
// and applies them right after the input that asked, or at the next
// drain when they come later. So a recording holds each answer where the
// live stage learnt it.
type liveMeta struct {
	r      MetaResolver
	wait   time.Duration // the resolver's wait: at least DefaultMetadataWait, so late answers still name later records
	labels map[string]struct{}
	ipGen  uint64

	mu      sync.Mutex
	answers []recording.Meta
	has     atomic.Bool
}

func newLiveMeta(r MetaResolver, wait time.Duration, labels []string) *liveMeta {
	l := &liveMeta{r: r, wait: max(wait, DefaultMetadataWait)}
	for _, k := range labels {
		if l.labels == nil {
			l.labels = map[string]struct{}{}
		}
		l.labels[k] = struct{}{}
	}
	return l
}

// ask is the stage's: Lookup first (a map read), else Wait. A re-ask
// (first false) only reports a name.
func (l *liveMeta) ask(k metadata.Key, first bool) {
	if m, ok := l.r.Lookup(k); ok {
		l.deliver(k, m, true)
		return
	}
	l.r.Wait(k, l.wait, func(m metadata.Meta, ok bool) {
		if ok || first {
			l.deliver(k, m, ok)
		}
	})
}

// keep is m with only the pod labels asked for: label sets are large and
// may be sensitive, and records, logs and recordings carry what is kept.
func (l *liveMeta) keep(m metadata.Meta) metadata.Meta {
	var kept map[string]string
	for k, v := range m.Pod.Labels {
		if _, ok := l.labels[k]; ok {
			if kept == nil {
				kept = map[string]string{}
			}
			kept[k] = v
		}
	}
	m.Pod.Labels = kept
	return m
}

func (l *liveMeta) deliver(k metadata.Key, m metadata.Meta, ok bool) {
	if ok {
		m = l.keep(m)
	} else {
		m = metadata.Meta{}
	}
	m.Runtime, m.ID = k.Runtime, k.ID
	l.mu.Lock()
	l.answers = append(l.answers, recording.Meta{Op: recording.MetaContainer, Known: ok, Meta: m})
	l.has.Store(true)
	l.mu.Unlock()
}

func (l *liveMeta) take(dst []recording.Meta) []recording.Meta {
	if !l.has.Load() {
		return dst
	}
	l.mu.Lock()
	dst = append(dst, l.answers...)
	clear(l.answers)
	l.answers = l.answers[:0]
	l.has.Store(false)
	l.mu.Unlock()
	return dst
}

// podIPs are the inputs that bring the stage's pod IPs to the
// resolver's, sorted by IP: gone ones first, then new or changed ones.
func (l *liveMeta) podIPs(known map[netip.Addr]*metadata.Meta) []recording.Meta {
	gen, list := l.r.PodIPs(l.ipGen)
	if list == nil {
		return nil
	}
	l.ipGen = gen
	var out []recording.Meta
	now := make(map[netip.Addr]bool, len(list))
	for _, m := range list {
		now[m.Pod.IP] = true
	}
	for ip := range known {
		if !now[ip] {
			out = append(out, recording.Meta{Op: recording.MetaPodIPGone, Meta: metadata.Meta{Pod: metadata.Pod{IP: ip}}})
		}
	}
	sortByIP(out)
	for _, m := range list {
		if old := known[m.Pod.IP]; old == nil || old.ID != m.ID {
			out = append(out, recording.Meta{Op: recording.MetaPodIP, Meta: l.keep(m)})
		}
	}
	return out
}

func sortByIP(ms []recording.Meta) {
	for i := 1; i < len(ms); i++ {
		for j := i; j > 0 && ms[j].Meta.Pod.IP.Less(ms[j-1].Meta.Pod.IP); j-- {
			ms[j], ms[j-1] = ms[j-1], ms[j]
		}
	}
}

// peersTraced reports whether the kernel filter passes both ends of a
// node-local connection whenever it passes one: then a record may wait
// for its peer's. Port and owner filters may pass one end only.
func peersTraced(f *probe.Filter) bool {
	return f.PID == 0 && f.CgroupID == 0 && len(f.LocalPorts) == 0 && len(f.RemotePorts) == 0
}

// startMeta turns the metadata stage on, with Options.Metadata.
func (s *Session) startMeta() error {
	o := &s.opts
	if o.Metadata == nil {
		return nil
	}
	s.meta = newLiveMeta(o.Metadata, o.metadataWait(), o.PodLabels)
	s.in.meta.ask = s.meta.ask
	s.in.meta.maxKeys = o.metadataEntries()
	if err := s.input(&recording.Input{Kind: recording.KindMeta, Meta: recording.Meta{
		Op: recording.MetaEnabled, Wait: o.metadataWait(), Peers: peersTraced(&o.Probe.Filter)}}); err != nil {
		return err
	}
	return s.syncPodIPs()
}

// metaInputs writes and applies the answers that came since the last
// time: after each input (the answers its asks got at once) and at each
// drain (those that came later).
func (s *Session) metaInputs() error {
	if s.meta == nil || s.answering {
		return nil
	}
	s.answering = true
	defer func() { s.answering = false }()
	for {
		s.answerBuf = s.meta.take(s.answerBuf[:0])
		if len(s.answerBuf) == 0 {
			return nil
		}
		for i := range s.answerBuf {
			s.metaIn = recording.Input{Kind: recording.KindMeta, Meta: s.answerBuf[i]}
			if err := s.input(&s.metaIn); err != nil {
				return err
			}
		}
	}
}

// syncPodIPs brings the pod IPs the runtime lists into the input stream.
func (s *Session) syncPodIPs() error {
	s.mu.Lock()
	ins := s.meta.podIPs(s.in.meta.ips)
	s.mu.Unlock()
	for i := range ins {
		s.metaIn = recording.Input{Kind: recording.KindMeta, Meta: ins[i]}
		if err := s.input(&s.metaIn); err != nil {
			return err
		}
	}
	return nil
}

// finishMeta, once the builder is flushed, waits up to the metadata wait
// for the answers records still wait for, then hands every record out.
func (s *Session) finishMeta() error {
	if s.meta != nil {
		deadline := time.Now().Add(s.opts.metadataWait())
		for {
			if err := s.metaInputs(); err != nil {
				return err
			}
			s.mu.Lock()
			waiting := s.in.meta.waiting()
			s.mu.Unlock()
			if !waiting || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	s.mu.Lock()
	s.in.meta.end()
	s.mu.Unlock()
	return nil
}
