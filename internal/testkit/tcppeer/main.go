// Command tcppeer is the payload of the test kit's container images: a
// static TCP server and client on loopback that a test drives from
// outside the container, without the runtime's help (so it works while
// the runtime is stopped).
//
//	tcppeer [-serve ADDR]... [-jobs DIR]
//
// Each -serve ADDR accepts connections until killed: it reads a request
// to its end (the client's FIN), answers with -reply bytes, and closes.
// With -jobs, it looks in DIR every 20ms for files NAME.job holding
//
//	dial ADDR COUNT BYTES
//
// makes COUNT connections to ADDR one after another, each sending BYTES
// and reading the answer to its end (the client closes first: its end
// goes through TIME_WAIT), and writes "ok COUNT" (or "error: ...") to
// NAME.done. The test writes the job through /proc/PID/root.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var serve listFlag
	flag.Var(&serve, "serve", "accept on this `ADDR` (repeatable)")
	jobs := flag.String("jobs", "", "run the jobs written to this `DIR`")
	reply := flag.Int("reply", 2000, "answer each request with `N` bytes")
	flag.Parse()
	for _, addr := range serve {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go accept(ln, *reply)
	}
	fmt.Println("ready")
	if *jobs == "" {
		select {}
	}
	for {
		names, _ := filepath.Glob(filepath.Join(*jobs, "*.job"))
		for _, n := range names {
			run(n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func accept(ln net.Listener, reply int) {
	answer := make([]byte, reply)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.Copy(io.Discard, c); err == nil {
				_, _ = c.Write(answer) // the client checks what it got
			}
		}()
	}
}

func run(job string) {
	b, err := os.ReadFile(job)
	os.Remove(job)
	if err != nil {
		return
	}
	result := "ok"
	f := strings.Fields(string(b))
	count, err1 := strconv.Atoi(at(f, 2))
	size, err2 := strconv.Atoi(at(f, 3))
	switch {
	case len(f) != 4 || f[0] != "dial" || err1 != nil || err2 != nil:
		result = fmt.Sprintf("error: bad job %q", b)
	default:
		for i := 0; i < count; i++ {
			if err := dial(f[1], size); err != nil {
				result = "error: " + err.Error()
				break
			}
		}
		if result == "ok" {
			result = "ok " + strconv.Itoa(count)
		}
	}
	done := strings.TrimSuffix(job, ".job") + ".done"
	// A result that cannot be written leaves the test waiting for it: say
	// why on stderr, which the container's log keeps.
	if err := os.WriteFile(done+".tmp", []byte(result+"\n"), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "tcppeer:", err)
		return
	}
	if err := os.Rename(done+".tmp", done); err != nil {
		fmt.Fprintln(os.Stderr, "tcppeer:", err)
	}
}

func at(f []string, i int) string {
	if i < len(f) {
		return f[i]
	}
	return ""
}

func dial(addr string, size int) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(make([]byte, size)); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, c)
	return err
}
