// Command tcpfsm traces TCP connection state transitions with eBPF.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/tcpfsm/tcpfsm/internal/buildinfo"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the tracer could not do its job
	exitUsage = 2 // the command line is wrong
)

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"trace", "print every TCP state transition as it happens", runTrace},
		{"life", "print one record per connection: handshake, states, who closed it and how, TIME_WAIT", runLife},
		{"top", "show what is open now, live: every connection, its state and for how long", runTop},
		{"agent", "serve Prometheus metrics and log connection records, as a host agent", runAgent},
		{"record", "write raw transition events to a file", runRecord},
		{"replay", "read a recording back, without privileges", runReplay},
		{"version", "print the version", runVersion},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a bad command line: exit 2 with its one-line message.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		topUsage(stderr)
		return exitUsage
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "help" {
		topUsage(stdout)
		return exitOK
	}
	for _, c := range commands() {
		if c.name != name {
			continue
		}
		err := c.run(args[1:], stdout, stderr)
		var ue *usageError
		switch {
		case err == nil:
			return exitOK
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "tcpfsm %s: %s (see tcpfsm %s --help)\n", name, ue.msg, name)
			return exitUsage
		default:
			fmt.Fprintf(stderr, "tcpfsm %s: %v\n", name, err)
			return exitError
		}
	}
	fmt.Fprintf(stderr, "tcpfsm: unknown command %q (see tcpfsm --help)\n", name)
	return exitUsage
}

func topUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString("tcpfsm: what are my TCP connections doing?\n\nUsage: tcpfsm COMMAND [FLAGS]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-9s %s\n", c.name, c.summary)
	}
	b.WriteString("\nRun 'tcpfsm COMMAND --help' for a command's flags.\n")
	_, _ = io.WriteString(w, b.String()) // usage text: a closed stdout has no one to tell
}

func runVersion(args []string, stdout, _ io.Writer) error {
	if len(args) > 0 {
		return usagef("version takes no arguments")
	}
	fmt.Fprintln(stdout, buildinfo.Get())
	return nil
}
