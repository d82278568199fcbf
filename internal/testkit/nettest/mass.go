package nettest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Mass closes: many connection pairs held by helper processes (one
// process keeps at most RLIMIT_NOFILE sockets), whose client ends all
// close at the same moment when their processes are killed.

// massRoles are the helper roles of this file, looked up by runHelper
// after its own: their names must differ from those (a "dialer" here was
// helper.go's dialer, which half-closes every tenth connection at once).
var massRoles = map[string]func(network, addr string, count int) error{
	"massdialer": dialMany,
	"masscloser": closeOnEOF,
}

// massOpenWithin bounds the opening of a mass's pairs: the servers'
// accepts and the wait for the clients' "connected" lines. The x86-64
// VMs open 24,000 pairs (3 client processes side by side) in 33-72 s;
// arm64's, emulated on an x86-64 host, had not opened its first client's
// 8,000 after 120 s. Slow makes it 600 s in the VMs.
var massOpenWithin = Slow(150 * time.Second)

// dialMany connects count times, prints "connected COUNT" and holds the
// connections until the process is killed (or stdin ends).
func dialMany(network, addr string, count int) error {
	held := make([]net.Conn, 0, count)
	for len(held) < count {
		c, err := net.DialTimeout(network, addr, 10*time.Second)
		if err != nil {
			return fmt.Errorf("dial %d: %w", len(held), err)
		}
		held = append(held, c)
	}
	fmt.Printf("connected %d\n", len(held))
	_, _ = io.Copy(io.Discard, os.Stdin) // to EOF or an error: either says close
	for _, c := range held {
		c.Close()
	}
	return nil
}

// closeOnEOF listens, prints "port N", accepts count connections, prints
// "accepted COUNT", then closes each one when its peer has closed (read
// returns EOF) and prints "done COUNT" once all are closed.
func closeOnEOF(network, addr string, count int) error {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Printf("port %d\n", ln.Addr().(*net.TCPAddr).Port)
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(massOpenWithin))
	var wg sync.WaitGroup
	errs := make(chan error, count)
	for i := 0; i < count; i++ {
		c, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("accept %d: %w", i, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The rest of the opening, then the close.
			c.SetReadDeadline(time.Now().Add(massOpenWithin + Slow(2*time.Minute)))
			_, err := io.Copy(io.Discard, c)
			if cerr := c.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	fmt.Printf("accepted %d\n", count)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	fmt.Printf("done %d\n", count)
	return nil
}

// Mass is a set of connection pairs: each client process holds its
// connections to one server process, which closes each accepted socket
// once its client has closed.
type Mass struct {
	Servers, Clients []*Peer
	PerProcess       int
}

// Pairs is how many connection pairs there are.
func (m *Mass) Pairs() int { return len(m.Clients) * m.PerProcess }

// StartMass opens procs × perProcess connection pairs over IPv4 loopback
// inside the namespace, in 2 × procs helper processes (comm "massclient",
// "massserver"), and returns when every one is established and accepted.
func (n *NS) StartMass(t testing.TB, procs, perProcess int) *Mass {
	t.Helper()
	m := &Mass{PerProcess: perProcess}
	for i := 0; i < procs; i++ {
		s := n.StartHelper(t, Helper{Comm: "massserver", Role: "masscloser", Network: "tcp4", Addr: "127.0.0.1:0", Send: perProcess})
		port := s.Port(t)
		c := n.StartHelper(t, Helper{Comm: "massclient", Role: "massdialer", Network: "tcp4",
			Addr: "127.0.0.1:" + strconv.Itoa(port), Send: perProcess})
		m.Servers, m.Clients = append(m.Servers, s), append(m.Clients, c)
	}
	for i := range m.Clients {
		want := fmt.Sprintf("%d", perProcess)
		if got := m.Clients[i].LineWithin(t, massOpenWithin); got != "connected "+want {
			t.Fatalf("client %d: %q, want \"connected %s\"", i, got, want)
		}
		if got := m.Servers[i].Line(t); got != "accepted "+want {
			t.Fatalf("server %d: %q, want \"accepted %s\"", i, got, want)
		}
	}
	return m
}

// CloseClients kills every client process at once: their exits close all
// the clients' sockets together (ESTABLISHED->FIN_WAIT1 in process
// context on every CPU), and the servers close theirs as the FINs arrive.
// It returns when every server has closed every socket.
func (m *Mass) CloseClients(t testing.TB) {
	t.Helper()
	for _, c := range m.Clients {
		if err := c.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("kill client %d: %v", c.Pid, err)
		}
	}
	for _, c := range m.Clients {
		err := c.Cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("client %d: %v, want killed; stderr: %s", c.Pid, err, c.stderr.String())
		}
	}
	for _, s := range m.Servers {
		if got := s.Done(t); got != m.PerProcess {
			t.Fatalf("server %d closed %d, want %d", s.Pid, got, m.PerProcess)
		}
	}
}

// SSStates counts the namespace's TCP sockets by state as ss prints them
// (ss -Htan: "ESTAB", "TIME-WAIT", ...), every socket of the namespace.
func (n *NS) SSStates(t testing.TB) map[string]int {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+n.Path(), "ss", "-Htan").Output()
	if err != nil {
		t.Fatalf("ss in the namespace: %v", err)
	}
	counts := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			counts[f[0]]++
		}
	}
	return counts
}
