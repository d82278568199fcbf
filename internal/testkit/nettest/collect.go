package nettest

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// Collector reads a probe in the background and keeps every event.
type Collector struct {
	p      *probe.Probe
	mu     sync.Mutex
	events []probe.Event
	err    error
	done   chan struct{}
}

// Collect starts reading p; the probe is closed when the test ends.
func Collect(t testing.TB, p *probe.Probe) *Collector {
	c := &Collector{p: p, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		var e probe.Event
		err := p.Read(func(raw []byte) error {
			if err := probe.Decode(raw, &e); err != nil {
				return err
			}
			c.mu.Lock()
			c.events = append(c.events, e)
			c.mu.Unlock()
			return nil
		}, nil)
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
	}()
	t.Cleanup(func() {
		p.Close()
		<-c.done
	})
	return c
}

// Probe is the probe being read.
func (c *Collector) Probe() *probe.Probe { return c.p }

// Events returns a copy of what was collected so far.
func (c *Collector) Events() []probe.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]probe.Event(nil), c.events...)
}

// WaitFor polls until cond holds for the events collected, for at most
// 10 seconds, and returns them.
func (c *Collector) WaitFor(t testing.TB, what string, cond func([]probe.Event) bool) []probe.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ev := c.Events()
		if cond(ev) {
			return ev
		}
		c.mu.Lock()
		err := c.err
		c.mu.Unlock()
		if err != nil {
			t.Fatalf("waiting for %s: reader failed: %v", what, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not seen within 10s; events:\n%s", what, Dump(ev))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop detaches the probe and returns every event, including those still
// in the ring buffer.
func (c *Collector) Stop(t testing.TB) []probe.Event {
	t.Helper()
	if err := c.p.Stop(); err != nil {
		t.Fatalf("stop probe: %v", err)
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatal("reader did not return within 10s of Stop")
	}
	if c.err != nil {
		t.Fatalf("reader: %v", c.err)
	}
	return c.Events()
}

// Transition is a state event's "OLD->NEW"; other events read
// "type@STATE", e.g. "reset_received@SYN_SENT".
func Transition(e *probe.Event) string {
	if e.EventType() != probe.TypeState {
		return e.EventType().String() + "@" + e.OldState().String()
	}
	return e.OldState().String() + "->" + e.NewState().String()
}

// Conn is the events of one connection id, in order.
type Conn struct {
	ID     uint64
	Events []probe.Event
}

// Transitions lists the connection's state changes, "OLD->NEW", in order.
func (c *Conn) Transitions() []string {
	var s []string
	for i := range c.Events {
		if c.Events[i].EventType() == probe.TypeState {
			s = append(s, Transition(&c.Events[i]))
		}
	}
	return s
}

// All lists every event of the connection, state changes as "OLD->NEW"
// and others as "type@STATE", in order.
func (c *Conn) All() []string {
	var s []string
	for i := range c.Events {
		s = append(s, Transition(&c.Events[i]))
	}
	return s
}

// States returns only the connection's state events.
func (c *Conn) States() []probe.Event {
	var out []probe.Event
	for _, e := range c.Events {
		if e.EventType() == probe.TypeState {
			out = append(out, e)
		}
	}
	return out
}

// Conns groups events by connection id, in order of first appearance.
// Events within a connection keep their order; the ring buffer orders
// them as the kernel reserved them, and a socket's transitions are
// serialized by its lock.
func Conns(events []probe.Event) []*Conn {
	byID := map[uint64]*Conn{}
	var out []*Conn
	for _, e := range events {
		c := byID[e.ConnId]
		if c == nil {
			c = &Conn{ID: e.ConnId}
			byID[e.ConnId] = c
			out = append(out, c)
		}
		c.Events = append(c.Events, e)
	}
	return out
}

// Closed reports whether the events hold a transition to CLOSE for a
// socket with these local and remote ports.
func Closed(events []probe.Event, lport, rport uint16) bool {
	for i := range events {
		e := &events[i]
		if e.EventType() == probe.TypeState && e.NewState() == probe.StateClose && e.Sport == lport && e.Dport == rport {
			return true
		}
	}
	return false
}

// Dump formats events for a failure message.
func Dump(events []probe.Event) string {
	var b strings.Builder
	for i := range events {
		e := &events[i]
		fmt.Fprintf(&b, "  id=%d %s -> %s %-24s pid=%d comm=%s owner=%s flags=%#x err=%d tx=%d rx=%d\n",
			e.ConnId, netip.AddrPortFrom(e.LocalAddr(), e.Sport), netip.AddrPortFrom(e.RemoteAddr(), e.Dport), Transition(e),
			e.Pid, e.CommBytes(), e.OwnerSource(), e.Flags, e.SkErr, e.TxBytes(), e.RxBytes())
	}
	return b.String()
}
