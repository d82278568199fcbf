package nettest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Helper processes are the test binary itself, started again through a
// symlink so that their comm is the link's name, with their role in the
// environment. Each test package's TestMain calls RunHelperIfAsked first.
const helperEnv = "TCPFSM_NETTEST_HELPER"

// Optional helper settings, also in the environment.
const (
	helperCgroupEnv = "TCPFSM_NETTEST_CGROUP" // move into this cgroup first
	helperHoldEnv   = "TCPFSM_NETTEST_HOLD"   // wait for a line on stdin first
)

// RunHelperIfAsked runs the helper role this process was started for, if
// any, and exits.
func RunHelperIfAsked() {
	role := os.Getenv(helperEnv)
	if role == "" {
		return
	}
	if cg := os.Getenv(helperCgroupEnv); cg != "" {
		procs := filepath.Join(cg, "cgroup.procs")
		if err := os.WriteFile(procs, []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			fmt.Fprintf(os.Stderr, "helper: join cgroup: %v\n", err)
			os.Exit(1)
		}
	}
	if os.Getenv(helperHoldEnv) != "" {
		// Held until the test writes a line or closes stdin (EOF): either
		// lets the helper go on.
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	}
	if err := runHelper(strings.Fields(role)); err != nil {
		fmt.Fprintf(os.Stderr, "helper %q: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Roles:
//
//	server NETWORK ADDR SEND: listen, print "port N", accept one
//	  connection, read until EOF, write SEND bytes, close, print "done RECEIVED".
//	client NETWORK ADDR SEND: connect, write SEND bytes, shut down the
//	  write side, read until EOF, close, print "done RECEIVED".
//	holder NETWORK ADDR COUNT: listen, print "port N", accept COUNT
//	  connections, print "accepted COUNT", then hold them all open, never
//	  reading, until a line on stdin (Release), and print "done 0".
//	dialer NETWORK ADDR COUNT: connect COUNT times, shut down the write
//	  side of every tenth connection (its socket in FIN_WAIT2, the peer's
//	  in CLOSE_WAIT), print "connected COUNT", hold them all until a line
//	  on stdin, close them and print "done 0".
//
//	massdialer, masscloser NETWORK ADDR COUNT: mass.go.
//
// Together server and client are a normal close, the client first, with
// payload both ways; a holder is a server that never closes, whose
// sockets sit in CLOSE_WAIT once their clients close.
func runHelper(args []string) error {
	if len(args) != 4 {
		return fmt.Errorf("want ROLE NETWORK ADDR SEND")
	}
	send, err := strconv.Atoi(args[3])
	if err != nil {
		return err
	}
	var conn *net.TCPConn
	switch args[0] {
	case "holder":
		return hold(args[1], args[2], send)
	case "dialer":
		return dial(args[1], args[2], send)
	case "server":
		ln, err := net.Listen(args[1], args[2])
		if err != nil {
			return err
		}
		defer ln.Close()
		fmt.Printf("port %d\n", ln.Addr().(*net.TCPAddr).Port)
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		conn = c.(*net.TCPConn)
		n, err := io.Copy(io.Discard, conn)
		if err != nil {
			return err
		}
		if _, err := conn.Write(make([]byte, send)); err != nil {
			return err
		}
		if err := conn.Close(); err != nil {
			return err
		}
		fmt.Printf("done %d\n", n)
	case "client":
		c, err := net.DialTimeout(args[1], args[2], 10*time.Second)
		if err != nil {
			return err
		}
		conn = c.(*net.TCPConn)
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := conn.Write(make([]byte, send)); err != nil {
			return err
		}
		if err := conn.CloseWrite(); err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, conn)
		if err != nil {
			return err
		}
		if err := conn.Close(); err != nil {
			return err
		}
		fmt.Printf("done %d\n", n)
	default:
		if role, ok := massRoles[args[0]]; ok {
			return role(args[1], args[2], send)
		}
		return fmt.Errorf("unknown role %q", args[0])
	}
	return nil
}

func hold(network, addr string, count int) error {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Printf("port %d\n", ln.Addr().(*net.TCPAddr).Port)
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(60 * time.Second))
	var held []net.Conn
	for len(held) < count {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		held = append(held, c)
	}
	fmt.Printf("accepted %d\n", len(held))
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // a line or EOF: the test says close
	for _, c := range held {
		c.Close()
	}
	fmt.Println("done 0")
	return nil
}

func dial(network, addr string, count int) error {
	held := make([]*net.TCPConn, 0, count)
	for i := 0; i < count; i++ {
		c, err := net.DialTimeout(network, addr, 10*time.Second)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		tc := c.(*net.TCPConn)
		if i%10 == 9 {
			if err := tc.CloseWrite(); err != nil {
				return err
			}
		}
		held = append(held, tc)
	}
	fmt.Printf("connected %d\n", len(held))
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // a line or EOF: the test says close
	for _, c := range held {
		c.Close()
	}
	fmt.Println("done 0")
	return nil
}

// Peer is a running helper process.
type Peer struct {
	Cmd    *exec.Cmd
	Pid    int
	Comm   string
	out    *bufio.Reader
	in     io.WriteCloser
	stderr strings.Builder
}

// Helper describes a helper process.
type Helper struct {
	Comm    string // its comm, at most 15 bytes
	Role    string // "server", "client" or "holder"
	Network string // tcp4, tcp6
	Addr    string // to listen on or connect to
	Send    int    // bytes to send; for a holder, connections to accept
	Cgroup  string // a cgroup v2 directory to join before anything else
	Hold    bool   // wait for Release before doing anything
}

// StartHelper starts a helper process inside the namespace.
func (n *NS) StartHelper(t testing.TB, h Helper) *Peer {
	t.Helper()
	if len(h.Comm) > 15 {
		t.Fatalf("comm %q longer than the kernel keeps", h.Comm)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), h.Comm)
	if err := os.Symlink(self, link); err != nil {
		t.Fatal(err)
	}
	p := &Peer{Comm: h.Comm}
	p.Cmd = exec.Command(link)
	p.Cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %s %d", helperEnv, h.Role, h.Network, h.Addr, h.Send))
	if h.Cgroup != "" {
		p.Cmd.Env = append(p.Cmd.Env, helperCgroupEnv+"="+h.Cgroup)
	}
	if h.Hold {
		p.Cmd.Env = append(p.Cmd.Env, helperHoldEnv+"=1")
	}
	p.Cmd.Stderr = &p.stderr
	stdout, err := p.Cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.out = bufio.NewReader(stdout)
	if p.in, err = p.Cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := n.Do(p.Cmd.Start); err != nil {
		t.Fatalf("start helper %s: %v", h.Comm, err)
	}
	p.Pid = p.Cmd.Process.Pid
	t.Cleanup(func() {
		if p.Cmd.ProcessState == nil {
			// A helper the test did not wait for: killed, so its exit
			// status is the kill's, not a result.
			_ = p.Cmd.Process.Kill()
			_ = p.Cmd.Wait()
		}
	})
	return p
}

// Release lets a held helper go on.
func (p *Peer) Release(t testing.TB) {
	t.Helper()
	if _, err := io.WriteString(p.in, "go\n"); err != nil {
		t.Fatalf("release helper %s: %v", p.Comm, err)
	}
}

// Line reads the helper's next output line.
func (p *Peer) Line(t testing.TB) string {
	t.Helper()
	return p.LineWithin(t, Slow(30*time.Second))
}

// LineWithin reads the helper's next output line, failing the test if
// none comes within d.
func (p *Peer) LineWithin(t testing.TB, d time.Duration) string {
	t.Helper()
	type result struct {
		s   string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := p.out.ReadString('\n')
		ch <- result{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("helper %s: read output: %v; stderr: %s", p.Comm, r.err, p.stderr.String())
		}
		return r.s
	case <-time.After(d):
		t.Fatalf("helper %s: no output within %v", p.Comm, d)
	}
	return ""
}

// Port reads the "port N" line a server prints.
func (p *Peer) Port(t testing.TB) int {
	t.Helper()
	line := p.Line(t)
	port, err := strconv.Atoi(strings.TrimPrefix(line, "port "))
	if err != nil {
		t.Fatalf("helper %s: want \"port N\", got %q", p.Comm, line)
	}
	return port
}

// Done waits for the helper to finish and returns how many bytes it received.
func (p *Peer) Done(t testing.TB) int {
	t.Helper()
	line := p.Line(t)
	n, err := strconv.Atoi(strings.TrimPrefix(line, "done "))
	if err != nil {
		t.Fatalf("helper %s: want \"done N\", got %q", p.Comm, line)
	}
	if err := p.Cmd.Wait(); err != nil {
		t.Fatalf("helper %s: %v; stderr: %s", p.Comm, err, p.stderr.String())
	}
	return n
}
