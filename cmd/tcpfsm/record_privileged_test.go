package main

// tcpfsm record when its disk fills, when the file exists, and the signals
// that end trace, life and record: each ends cleanly, its output whole.

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"github.com/tcpfsm/tcpfsm/tracer/recording"
)

// replayEvents replays a recording as a user would and returns the events
// it read; any error about the file fails the test.
func replayEvents(t *testing.T, bin, file string) int {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "replay", "-o", "json", file)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("replay %s: %v\n%s", file, err, stderr.String())
	}
	m := regexp.MustCompile(`(\d+) events read`).FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("replay summary: %q", stderr.String())
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// The disk fills while recording: record stops with exit 1 and a message
// that says so and what the file keeps; the file replays to its end.
func TestRecordFullDisk(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	disk := tmpfs(t, 1<<20)
	file := filepath.Join(disk, "tcp.rec")
	cmd, _, stderr := startTracer(t, bin, "record", "-w", file, "--netns", ns.Path(), "-d", "60s")
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	var err error
	conns := 0
churn:
	for conns < 20000 {
		n, cerr := ns.Churn(ln, 200, nil, nil)
		if cerr != nil {
			t.Fatal(cerr)
		}
		conns += n
		select {
		case err = <-exited:
			break churn
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err == nil {
		select {
		case err = <-exited:
		case <-time.After(20 * time.Second):
			t.Fatalf("record still running after %d connections on a 1 MiB disk", conns)
		}
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitError {
		t.Fatalf("record on a full disk: %v, want exit 1\nstderr:\n%s", err, stderr)
	}
	msg := stderr.String()
	m := regexp.MustCompile(`no space left on device: recording stopped; the file keeps the (\d+) events \((\d+) bytes\) written before, a valid recording`).FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("stderr does not say what happened:\n%s", msg)
	}
	kept, _ := strconv.Atoi(m[1])
	size, _ := strconv.ParseInt(m[2], 10, 64)
	if fi, err := os.Stat(file); err != nil || fi.Size() != size {
		t.Errorf("file: %v, %v; the message says %d bytes", fi, err, size)
	}
	if got := replayEvents(t, bin, file); got != kept || kept < 1000 {
		t.Errorf("replay read %d events, record said %d kept", got, kept)
	}
	t.Logf("%d connections; %d events (%d bytes) kept on the 1 MiB disk", conns, kept, size)
}

// An existing file is refused (exit 2, naming --force), unchanged; with
// --force it is replaced by a new recording.
func TestRecordExistingFile(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)
	file := filepath.Join(t.TempDir(), "old.rec")
	old := []byte("an earlier recording")
	if err := os.WriteFile(file, old, 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "record", "-w", file, "-d", "1s")
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || strings.Count(stderr.String(), "\n") != 1 ||
		!strings.Contains(stderr.String(), "--force") || !strings.Contains(stderr.String(), file) {
		t.Fatalf("record -w on an existing file: %v, stderr %q", err, stderr.String())
	}
	if b, _ := os.ReadFile(file); !bytes.Equal(b, old) {
		t.Fatalf("the refused file changed: %q", b)
	}
	if out, err := exec.Command(bin, "record", "--force", "-w", file, "-d", "1s").CombinedOutput(); err != nil {
		t.Fatalf("record --force: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(file)
	if !bytes.HasPrefix(b, []byte(recording.Magic)) {
		t.Fatalf("--force did not replace the file: %q", b[:min(len(b), 32)])
	}
	replayEvents(t, bin, file)
}

// SIGHUP (a closed terminal, a supervisor) ends trace, life and record as
// SIGINT does: exit 0, output flushed; the recording replays.
func TestStopSignalsEndCleanly(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)
	ns := nettest.NewNS(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT} {
		for _, c := range []string{"trace", "life", "record"} {
			args := []string{c, "--netns", ns.Path(), "-o", "json"}
			file := filepath.Join(t.TempDir(), "tcp.rec")
			if c == "record" {
				args = []string{c, "--netns", ns.Path(), "-w", file}
			}
			cmd, stdout, stderr := startTracer(t, bin, args...)
			var out bytes.Buffer
			copied := make(chan struct{})
			go func() { _, _ = out.ReadFrom(stdout); close(copied) }() // to EOF: the command's exit
			if _, err := ns.Churn(ln, 20, nil, nil); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond) // past a flush interval: the events are read
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			<-copied
			waitExit(t, cmd)
			if ws := cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signaled() {
				t.Fatalf("%s killed by %v", c, ws.Signal())
			}
			switch c {
			case "trace", "life":
				// 20 connections: both ends' transitions, or records.
				lines := strings.Count(out.String(), "\n")
				if lines < 40 {
					t.Errorf("%s after %v: %d lines, want those of 20 connections\nstderr:\n%s", c, sig, lines, stderr)
				}
			case "record":
				if n := replayEvents(t, bin, file); n < 20*6 {
					t.Errorf("record after %v: %d events replayed", sig, n)
				}
			}
		}
	}
}
