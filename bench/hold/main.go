// Command hold opens many loopback TCP connections and holds them open, a
// dev tool for the memory benchmark (bench/runner's memory phase; not part
// of the shipped binary).
//
// It listens on -ports loopback ports, connects -pairs clients to them
// round robin (accepting each), prints {"open": N} once every pair is
// ESTABLISHED on both ends, and waits for a line on stdin. Then it closes
// every pair (-close rst: the client with SO_LINGER 0, so neither end
// goes to TIME_WAIT; -close fin: both ends close, the client first),
// prints {"closed": N} and exits. Meant to run in a network namespace of
// its own (the runner makes one): it widens that namespace's ephemeral
// port range so that one address pair holds the connections.
//
// A process holds as many pairs as its RLIMIT_NOFILE allows (it raises
// its soft limit to the hard one; root without CAP_SYS_RESOURCE cannot go
// further): for more, hold starts copies of itself, each with its own
// listening ports and a share of the pairs, and speaks for them all.
//
// Only loopback addresses are used; the count is bounded by -pairs and
// the open phase by -d.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	pairs := flag.Int("pairs", 50000, "connections to open (each is two sockets, both ends on loopback)")
	ports := flag.Int("ports", 4, "listening ports the pairs are spread over")
	closeHow := flag.String("close", "rst", "how to close: rst (client SO_LINGER 0) or fin (graceful, client first)")
	d := flag.Duration("d", 2*time.Minute, "give up opening after this long")
	widen := flag.Bool("widen-ports", true, "set this namespace's net.ipv4.ip_local_port_range to 1024-65535")
	flag.Parse()
	if *pairs < 1 || *pairs > 500_000 || *ports < 1 || *ports > 64 {
		fatal(errors.New("-pairs 1..500000, -ports 1..64"))
	}
	if *closeHow != "rst" && *closeHow != "fin" {
		fatal(fmt.Errorf("-close %q: want rst or fin", *closeHow))
	}
	if *widen {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("1024 65535"), 0o644); err != nil {
			fatal(err)
		}
	}
	limit, err := raiseNofile()
	if err != nil {
		fatal(err)
	}
	if per := (int(limit) - *ports - 64) / 2; *pairs > per {
		if err := spread(*pairs, per); err != nil {
			fatal(err)
		}
		return
	}
	fds, err := open(*pairs, *ports, *d)
	if err != nil {
		fatal(err)
	}
	out := json.NewEncoder(os.Stdout)
	_ = out.Encode(map[string]int{"open": len(fds) / 2}) // stdout gone: the runner is gone too
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')    // EOF also means close
	linger := unix.Linger{Onoff: 1, Linger: 0}
	for i := 0; i < len(fds); i += 2 {
		if *closeHow == "rst" {
			_ = unix.SetsockoptLinger(fds[i], unix.SOL_SOCKET, unix.SO_LINGER, &linger) // else a FIN: still a close
		}
		unix.Close(fds[i])
		unix.Close(fds[i+1])
	}
	_ = out.Encode(map[string]int{"closed": len(fds) / 2})
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "hold:", err)
	os.Exit(1)
}

// raiseNofile sets the soft fd limit to the hard one and returns it.
func raiseNofile() (uint64, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("RLIMIT_NOFILE %d: %w", lim.Max, err)
	}
	return lim.Cur, nil
}

// spread runs copies of this command holding per pairs each (the last
// one the rest), opens them all, and passes the close on.
func spread(pairs, per int) error {
	type child struct {
		cmd   *exec.Cmd
		in    io.WriteCloser
		lines *bufio.Scanner
	}
	var kids []child
	defer func() {
		for _, k := range kids {
			_ = k.cmd.Process.Kill() // gone already after a clean close: ESRCH
			_ = k.cmd.Wait()
		}
	}()
	args := os.Args[1:]
	for left := pairs; left > 0; left -= per {
		n := min(per, left)
		// This same program with its own arguments and a share of the pairs.
		cmd := exec.Command(os.Args[0], append(slices.Clone(args), "-pairs", strconv.Itoa(n), "-widen-ports=false")...) //nolint:gosec // re-runs itself, a bench tool run by the runner

		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		kids = append(kids, child{cmd, in, bufio.NewScanner(out)})
		// One at a time: the opens stay sequential, as in one process.
		if !kids[len(kids)-1].lines.Scan() {
			return fmt.Errorf("copy %d did not open its %d pairs", len(kids), n)
		}
	}
	out := json.NewEncoder(os.Stdout)
	_ = out.Encode(map[string]int{"open": pairs, "processes": len(kids)}) // stdout gone: the runner is gone too
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	for _, k := range kids {
		if _, err := io.WriteString(k.in, "close\n"); err != nil {
			return err
		}
	}
	for i, k := range kids {
		if !k.lines.Scan() {
			return fmt.Errorf("copy %d did not close", i+1)
		}
	}
	_ = out.Encode(map[string]int{"closed": pairs})
	return nil
}

// open returns the pairs' fds, client then server, in pairs order.
func open(pairs, ports int, d time.Duration) ([]int, error) {
	lo := [4]byte{127, 0, 0, 1}
	var dsts []unix.Sockaddr
	var lfds []int
	defer func() {
		for _, l := range lfds {
			unix.Close(l)
		}
	}()
	for p := 0; p < ports; p++ {
		l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		lfds = append(lfds, l)
		if err := unix.Bind(l, &unix.SockaddrInet4{Addr: lo}); err != nil {
			return nil, fmt.Errorf("bind: %w", err)
		}
		if err := unix.Listen(l, 4096); err != nil {
			return nil, fmt.Errorf("listen: %w", err)
		}
		sa, err := unix.Getsockname(l)
		if err != nil {
			return nil, err
		}
		dsts = append(dsts, &unix.SockaddrInet4{Addr: lo, Port: sa.(*unix.SockaddrInet4).Port})
	}
	deadline := time.Now().Add(d)
	fds := make([]int, 0, 2*pairs)
	for i := 0; i < pairs; i++ {
		if i&1023 == 0 && time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d pairs open after %s", i, pairs, d)
		}
		c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("socket (pair %d): %w", i, err)
		}
		if err := unix.Connect(c, dsts[i%ports]); err != nil {
			return nil, fmt.Errorf("connect (pair %d): %w", i, err)
		}
		// Blocking connect() on loopback returns once the handshake is
		// done; the child is in the accept queue.
		s, _, err := unix.Accept4(lfds[i%ports], unix.SOCK_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("accept (pair %d): %w", i, err)
		}
		fds = append(fds, c, s)
	}
	return fds, nil
}
