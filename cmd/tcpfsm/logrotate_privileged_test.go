package main

// Debian's logrotate with the shipped deploy/logrotate/tcpfsm-agent
// against a running agent under churn: rename and reload (the unit's
// ExecReload, SIGHUP), and copytruncate. Every record is in exactly one of
// the files, compressed ones included.

import (
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
)

const shippedLog = "/var/log/tcpfsm/connections.jsonl"

// logrotateConfig is the shipped configuration for a log at path;
// copytruncate swaps its postrotate reload for copytruncate, as its
// comment says to.
func logrotateConfig(t *testing.T, path string, copytruncate bool) string {
	t.Helper()
	conf := string(readDeploy(t, "logrotate/tcpfsm-agent"))
	if strings.Count(conf, shippedLog) != 1 {
		t.Fatalf("the logrotate configuration names %s %d times, want once (the unit's --log.file)", shippedLog, strings.Count(conf, shippedLog))
	}
	unit := string(readDeploy(t, "systemd/tcpfsm-agent.service"))
	if !strings.Contains(unit, "--log.file "+shippedLog) {
		t.Fatalf("the unit does not log to %s", shippedLog)
	}
	conf = strings.Replace(conf, shippedLog, path, 1)
	if copytruncate {
		a, b := strings.Index(conf, "\tpostrotate"), strings.Index(conf, "endscript\n")
		if a < 0 || b < a {
			t.Fatal("no postrotate script")
		}
		conf = conf[:a] + "\tcopytruncate\n" + conf[b+len("endscript\n"):]
	}
	return conf
}

// systemctlShim is systemctl as the postrotate script uses it, for an
// agent not run by systemd (systemd is not PID 1 here): is-active says
// yes, reload runs the unit's ExecReload with $MAINPID the agent's pid.
func systemctlShim(t *testing.T, pid int) string {
	t.Helper()
	d := unitDirectives(t, readDeploy(t, "systemd/tcpfsm-agent.service"))
	if !slices.Equal(d["ExecReload"], []string{"/bin/kill -HUP $MAINPID"}) {
		t.Fatalf("ExecReload=%q, want /bin/kill -HUP $MAINPID", d["ExecReload"])
	}
	reload := strings.ReplaceAll(d["ExecReload"][0], "$MAINPID", strconv.Itoa(pid))
	dir := t.TempDir()
	script := fmt.Sprintf(`#!/bin/sh
case "$*" in
"is-active --quiet tcpfsm-agent.service") exit 0 ;;
"reload tcpfsm-agent.service") exec %s ;;
esac
echo "systemctl shim: unexpected $*" >&2
exit 1
`, reload)
	if err := os.WriteFile(filepath.Join(dir, "systemctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// rotate runs logrotate -f once.
func rotate(t *testing.T, logrotate, conf, state, shim string) {
	t.Helper()
	cmd := exec.Command(logrotate, "-f", "-s", state, conf)
	cmd.Env = append(os.Environ(), "PATH="+shim+":"+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("logrotate: %v\n%s", err, out)
	}
}

// readRotated reads every file of a rotated log, the compressed ones too.
func readRotated(t *testing.T, path string) (map[string][]logRecord, []string) {
	t.Helper()
	names, _ := filepath.Glob(path + "*")
	out := map[string][]logRecord{}
	for _, n := range names {
		f, err := os.Open(n)
		if err != nil {
			t.Fatal(err)
		}
		var r io.Reader = f
		if strings.HasSuffix(n, ".gz") {
			if r, err = gzip.NewReader(f); err != nil {
				t.Fatalf("%s: %v", n, err)
			}
		}
		data, err := io.ReadAll(r)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		out[filepath.Base(n)] = wholeJSONLines(t, data)
	}
	var bases []string
	for _, n := range names {
		bases = append(bases, filepath.Base(n))
	}
	return out, bases
}

// exactlyOnce checks the records of all files against the connections
// made (their client ports, two records per use) and the agent's count.
func exactlyOnce(t *testing.T, files map[string][]logRecord, made []int, sport int, written float64) {
	t.Helper()
	seen := map[uint64]string{}
	ends := map[int]int{}
	total := 0
	for name, recs := range files {
		for _, r := range recs {
			if other, dup := seen[r.ID]; dup {
				t.Errorf("record %d in %s and %s", r.ID, other, name)
			}
			seen[r.ID] = name
			total++
			if r.Role == "active" && r.Rport == sport {
				ends[r.Lport]++
			}
			if r.Role == "passive" && r.Lport == sport {
				ends[r.Rport]++
			}
		}
	}
	for _, p := range made {
		ends[p] -= 2
	}
	off := 0
	for _, n := range ends {
		if n != 0 {
			off++
		}
	}
	if off > 0 || total != 2*len(made) || float64(total) != written {
		t.Errorf("%d connections: %d records in %d files (agent: %v written), %d ports with records not two per use",
			len(made), total, len(files), written, off)
	}
}

func TestDeployLogrotate(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	logrotate := needTool(t, "logrotate", "logrotate")
	bin := buildBinary(t)

	// Rename, then the unit's reload, three times under churn.
	t.Run("rename and reload", func(t *testing.T) {
		ns := nettest.NewNS(t)
		dir := t.TempDir()
		log := filepath.Join(dir, "connections.jsonl")
		conf := filepath.Join(dir, "logrotate.conf")
		if err := os.WriteFile(conf, []byte(logrotateConfig(t, log, false)), 0o644); err != nil {
			t.Fatal(err)
		}
		a := startAgent(t, bin, agentOptions{args: append([]string{"--netns", ns.Path(), "--log.file", log}, small...)})
		shim := systemctlShim(t, a.cmd.Process.Pid)
		ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
		stop := make(chan struct{})
		ports := make(chan []int, 1)
		churnErr := make(chan error, 1)
		go func() {
			var ps []int
			_, err := ns.Churn(ln, 30000, stop, func(p int) { ps = append(ps, p) })
			churnErr <- err
			ports <- ps
		}()
		for i := 1; i <= 3; i++ {
			time.Sleep(300 * time.Millisecond)
			rotate(t, logrotate, conf, filepath.Join(dir, "state"), shim)
			a.waitMetric(t, fmt.Sprintf("reopen %d", i), func(mfs map[string]*dto.MetricFamily) bool {
				return readLogStats(mfs).reopens >= float64(i)
			})
		}
		time.Sleep(300 * time.Millisecond)
		close(stop)
		if err := <-churnErr; err != nil {
			t.Fatalf("churn: %v", err)
		}
		made := <-ports
		st := waitLogged(t, a, float64(2*len(made)))
		if code := a.stop(t); code != 0 {
			t.Fatalf("exit %d\nstderr:\n%s", code, a.stderr)
		}
		files, names := readRotated(t, log)
		// delaycompress: the newest rotated file stays plain.
		want := []string{"connections.jsonl", "connections.jsonl.1", "connections.jsonl.2.gz", "connections.jsonl.3.gz"}
		if !slices.Equal(names, want) {
			t.Errorf("files %v, want %v", names, want)
		}
		exactlyOnce(t, files, made, ln.Addr().(*net.TCPAddr).Port, st.written)
		if st.reopens != 3 || st.reopenErrors != 0 || st.writeError+st.queueFull != 0 {
			t.Errorf("agent: %+v", st)
		}
		t.Logf("%d connections, %d files, %v records written", len(made), len(files), st.written)
	})

	// copytruncate: lines after each truncation start the file again (append
	// mode: no hole). Rotated between bursts, as logrotate(8) says what is
	// written between its copy and its truncation is lost.
	t.Run("copytruncate", func(t *testing.T) {
		ns := nettest.NewNS(t)
		dir := t.TempDir()
		log := filepath.Join(dir, "connections.jsonl")
		conf := filepath.Join(dir, "logrotate.conf")
		if err := os.WriteFile(conf, []byte(logrotateConfig(t, log, true)), 0o644); err != nil {
			t.Fatal(err)
		}
		a := startAgent(t, bin, agentOptions{args: append([]string{"--netns", ns.Path(), "--log.file", log}, small...)})
		ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
		var made []int
		for i := 1; i <= 3; i++ {
			made = append(made, churn(t, ns, ln, 300)...)
			waitLogged(t, a, float64(2*len(made)))
			rotate(t, logrotate, conf, filepath.Join(dir, "state"), t.TempDir())
			if fi, err := os.Stat(log); err != nil || fi.Size() != 0 {
				t.Fatalf("after copytruncate: %v, %v", fi, err)
			}
		}
		made = append(made, churn(t, ns, ln, 300)...)
		st := waitLogged(t, a, float64(2*len(made)))
		if code := a.stop(t); code != 0 {
			t.Fatalf("exit %d\nstderr:\n%s", code, a.stderr)
		}
		files, names := readRotated(t, log)
		want := []string{"connections.jsonl", "connections.jsonl.1", "connections.jsonl.2.gz", "connections.jsonl.3.gz"}
		if !slices.Equal(names, want) {
			t.Errorf("files %v, want %v", names, want)
		}
		for name, recs := range files {
			if len(recs) != 600 {
				t.Errorf("%s: %d records, want the 600 of one burst", name, len(recs))
			}
		}
		exactlyOnce(t, files, made, ln.Addr().(*net.TCPAddr).Port, st.written)
	})
}
