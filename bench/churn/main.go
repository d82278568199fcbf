// Command churn is tcpfsm's connection-churn load generator, a dev tool
// for the benchmarks (not part of the shipped binary).
//
// It opens and closes TCP connections on loopback as fast as it can (or at
// a fixed rate): a client thread pinned to one CPU connects and closes each
// connection, a server thread pinned to another CPU accepts and closes.
// With -close rst (the default) the client closes with a RST (SO_LINGER 0);
// with -close fin it closes gracefully first and the server closes once it
// has read the client's FIN, so every client end goes through FIN_WAIT1,
// FIN_WAIT2 and TIME_WAIT (the kernel's time-wait sockets build up, and
// loopback's tcp_tw_reuse lets connect() take their ports again after 1 s). Both use blocking system calls on locked OS
// threads, never Go's netpoller, so the loop costs about what a C client
// would. It stops after -n connections or -d, whichever comes first, and
// prints one JSON line: connections, seconds, connections/s.
//
// Only loopback addresses are accepted.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

type result struct {
	Connections uint64  `json:"connections"`
	Seconds     float64 `json:"seconds"`
	PerSecond   float64 `json:"conn_per_s"`
	Errors      uint64  `json:"errors"`
	ClientCPU   int     `json:"client_cpu"`
	ServerCPU   int     `json:"server_cpu"`
	Rate        float64 `json:"rate,omitempty"`
	Close       string  `json:"close"`
}

func main() {
	n := flag.Uint64("n", 100000, "stop after this many connections")
	d := flag.Duration("d", 10*time.Second, "stop after this long")
	addr := flag.String("addr", "127.0.0.1", "loopback address to listen on and connect to")
	clientCPU := flag.Int("client-cpu", 0, "CPU the client thread runs on (-1: any)")
	serverCPU := flag.Int("server-cpu", 1, "CPU the server thread runs on (-1: any)")
	rate := flag.Float64("rate", 0, "connections per second, 0 for as fast as possible")
	backlog := flag.Int("backlog", 1024, "listen backlog; the client never gets further ahead of the server")
	closeMode := flag.String("close", "rst", "how the client closes: rst (SO_LINGER 0) or fin (graceful, the client first)")
	flag.Parse()

	ip, err := netip.ParseAddr(*addr)
	if err != nil || !ip.IsLoopback() {
		fatal(fmt.Errorf("-addr %q: want a loopback address", *addr))
	}
	if *d <= 0 || *d > time.Hour {
		fatal(errors.New("-d: want a duration up to 1h"))
	}
	if *closeMode != "rst" && *closeMode != "fin" {
		fatal(fmt.Errorf("-close %q: want rst or fin", *closeMode))
	}
	res, err := run(ip, *n, *d, *clientCPU, *serverCPU, *rate, *backlog, *closeMode == "fin")
	if err != nil {
		fatal(err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, "churn:", err)
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "churn:", err)
	os.Exit(1)
}

func sockaddr(ip netip.Addr, port int) (int, unix.Sockaddr) {
	if ip.Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Addr: ip.As4(), Port: port}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Addr: ip.As16(), Port: port}
}

// pin locks the goroutine to its thread and the thread to a CPU.
func pin(cpu int) error {
	runtime.LockOSThread()
	if cpu < 0 {
		return nil
	}
	var set unix.CPUSet
	set.Set(cpu)
	return unix.SchedSetaffinity(0, &set)
}

func run(ip netip.Addr, n uint64, d time.Duration, clientCPU, serverCPU int, rate float64, backlog int, fin bool) (result, error) {
	family, sa := sockaddr(ip, 0)
	lfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return result{}, err
	}
	defer unix.Close(lfd)
	_ = unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) // a bind that needs it fails next, checked
	if err := unix.Bind(lfd, sa); err != nil {
		return result{}, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(lfd, backlog); err != nil {
		return result{}, fmt.Errorf("listen: %w", err)
	}
	bound, err := unix.Getsockname(lfd)
	if err != nil {
		return result{}, err
	}
	var port int
	switch a := bound.(type) {
	case *unix.SockaddrInet4:
		port = a.Port
	case *unix.SockaddrInet6:
		port = a.Port
	}
	_, dst := sockaddr(ip, port)

	var (
		accepted atomic.Uint64
		done     atomic.Bool
		errs     atomic.Uint64
		wg       sync.WaitGroup
		srvErr   error
	)
	// The server: accept, close. A connection the client has already
	// reset is still handed out by accept(). With fin, it reads until the
	// client's FIN (the client sends nothing) before it closes, so the
	// client always closes first.
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := pin(serverCPU); err != nil {
			srvErr = err
			return
		}
		for {
			fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
			if err != nil {
				if done.Load() {
					return
				}
				if err == unix.EINTR || err == unix.ECONNABORTED {
					continue
				}
				srvErr = fmt.Errorf("accept: %w", err)
				return
			}
			if fin {
				var b [64]byte
				for {
					n, err := unix.Read(fd, b[:])
					if n > 0 || err == unix.EINTR {
						continue
					}
					break // EOF, or an error: close either way
				}
			}
			unix.Close(fd)
			accepted.Add(1)
		}
	}()

	// The client, on this goroutine's own locked thread.
	var sent uint64
	var start, end time.Time
	cliDone := make(chan error, 1)
	go func() {
		if err := pin(clientCPU); err != nil {
			cliDone <- err
			return
		}
		linger := unix.Linger{Onoff: 1, Linger: 0}
		start = time.Now()
		deadline := start.Add(d)
		var interval time.Duration
		if rate > 0 {
			interval = time.Duration(float64(time.Second) / rate)
		}
		next := start
		for sent < n {
			if sent&63 == 0 && time.Now().After(deadline) {
				break
			}
			if interval > 0 {
				next = next.Add(interval)
				if w := time.Until(next); w > 0 {
					time.Sleep(w)
				}
			}
			// Never more connections in flight than the backlog holds:
			// a full accept queue drops SYNs and stalls connect() for a
			// second.
			for sent-accepted.Load() > uint64(backlog/2) {
				if time.Now().After(deadline.Add(5 * time.Second)) {
					cliDone <- errors.New("server stopped accepting")
					return
				}
				_ = unix.Nanosleep(&unix.Timespec{Nsec: 20000}, nil) // EINTR: a shorter pause
			}
			fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				cliDone <- fmt.Errorf("socket: %w", err)
				return
			}
			if !fin {
				_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &linger) // a graceful close instead: still a close
			}
			if err := unix.Connect(fd, dst); err != nil {
				errs.Add(1)
				unix.Close(fd)
				if errs.Load() > 1000 {
					cliDone <- fmt.Errorf("connect: %w", err)
					return
				}
				continue
			}
			unix.Close(fd) // SO_LINGER 0: RST; else a FIN
			sent++
		}
		end = time.Now()
		cliDone <- nil
	}()
	cerr := <-cliDone

	// Let the server take what is queued, then stop it.
	wait := time.Now().Add(2 * time.Second)
	for accepted.Load() < sent && time.Now().Before(wait) {
		time.Sleep(time.Millisecond)
	}
	done.Store(true)
	_ = unix.Shutdown(lfd, unix.SHUT_RDWR) // wakes the acceptors; the close below is what counts
	wg.Wait()
	if cerr != nil {
		return result{}, cerr
	}
	if srvErr != nil {
		return result{}, srvErr
	}
	secs := end.Sub(start).Seconds()
	return result{Connections: sent, Seconds: secs, PerSecond: float64(sent) / secs, Errors: errs.Load(),
		ClientCPU: clientCPU, ServerCPU: serverCPU, Rate: rate, Close: map[bool]string{false: "rst", true: "fin"}[fin]}, nil
}
