package nettest

// Traffic of the kinds the agent's tests count: a server that answers and
// closes, connections the client closes first, refused connects and
// client resets, all inside the test's namespace and bounded in time.

import (
	"io"
	"net"
	"testing"
	"time"
)

// Serve accepts on ln until ln is closed (the test's end): each
// connection is read to EOF (or a reset), answered with reply bytes and
// closed; the remote port of each handled connection is sent on the
// returned channel, which holds 4096 before a handler blocks.
func Serve(t testing.TB, ln *net.TCPListener, reply int) <-chan int {
	done := make(chan int, 4096)
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				// A reset or the deadline ends the read as EOF does, and
				// a reply that fails shows in the client's read: the
				// tests check the client's side and the transitions.
				_, _ = io.Copy(io.Discard, c)
				if reply > 0 {
					_, _ = c.Write(make([]byte, reply))
				}
				c.Close()
				done <- c.RemoteAddr().(*net.TCPAddr).Port
			}()
		}
	}()
	return done
}

// Graceful makes a connection that the client closes first: it sends
// send bytes, shuts down its side, reads the reply to EOF and closes. The
// client's end goes through TIME_WAIT. It returns the client's port.
func (n *NS) Graceful(t testing.TB, addr string, send int) int {
	t.Helper()
	c, err := n.Dial("tcp4", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(make([]byte, send)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatal(err)
	}
	port := c.LocalAddr().(*net.TCPAddr).Port
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

// Refused connects to a port nothing listens on.
func (n *NS) Refused(t testing.TB) {
	t.Helper()
	ln := n.Listen(t, "tcp4", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if c, err := n.Dial("tcp4", addr); !IsRefused(err) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial %s: %v, want refused", addr, err)
	}
}

// Reset makes a connection the client aborts with a RST (SO_LINGER 0).
func (n *NS) Reset(t testing.TB, addr string) {
	t.Helper()
	c, err := n.Dial("tcp4", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := c.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// MixCounts says how many connections of each kind Mixed made.
type MixCounts struct{ Graceful, Refused, Reset int }

// Mixed is one round of traffic of every kind: graceful (client first,
// into TIME_WAIT), refused, reset. It returns how many of each.
func (n *NS) Mixed(t testing.TB, addr string) MixCounts {
	t.Helper()
	c := MixCounts{Graceful: 8, Refused: 3, Reset: 3}
	for i := 0; i < c.Graceful; i++ {
		n.Graceful(t, addr, 1000+i)
	}
	for i := 0; i < c.Refused; i++ {
		n.Refused(t)
	}
	for i := 0; i < c.Reset; i++ {
		n.Reset(t, addr)
	}
	return c
}
