package main

// A real Prometheus for the end-to-end tests: Debian's prometheus on a free
// loopback port, with its own storage, queried over its HTTP API.

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// ---- a real Prometheus ----

// promServer runs Debian's prometheus on a free loopback port with its own
// storage, scraping the agent every second and evaluating rules every second.
type promServer struct {
	addr   string
	cmd    *exec.Cmd
	stderr *lockedBuffer
}

func startPrometheus(t testing.TB, promBin, target, rulesFile string) *promServer {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: tcpfsm
    static_configs:
      - targets: [%q]
`, rulesFile, target)
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &promServer{addr: freeAddr(t), stderr: &lockedBuffer{}}
	p.cmd = exec.Command(promBin, "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+p.addr, "--log.level=warn")
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		// Prometheus runs until the cleanup stops it: its exit status
		// (SIGTERM's) is not a result.
		_ = p.cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		// Fails only if it has exited already, which the select sees.
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + p.addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-exited:
			t.Fatalf("prometheus exited: %s", p.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready within 30s: %v\n%s", err, p.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s promSample) float() float64 {
	str, _ := s.Value[1].(string)
	f, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return math.NaN()
	}
	return f
}

// query runs an instant query; a query Prometheus rejects fails the test.
func (p *promServer) query(t testing.TB, q string) []promSample {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
	if r.Status != "success" {
		t.Fatalf("query %q: %s", q, r.Error)
	}
	var out []promSample
	switch r.Data.ResultType {
	case "vector":
		if err := json.Unmarshal(r.Data.Result, &out); err != nil {
			t.Fatal(err)
		}
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(r.Data.Result, &v); err != nil {
			t.Fatal(err)
		}
		out = []promSample{{Value: v}}
	default:
		t.Fatalf("query %q: result type %s", q, r.Data.ResultType)
	}
	return out
}

// value is a query's single value (NaN when it has none).
func (p *promServer) value(t testing.TB, q string) float64 {
	t.Helper()
	res := p.query(t, q)
	if len(res) != 1 {
		return math.NaN()
	}
	return res[0].float()
}
