package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzAgentConfig: whatever the YAML, the agent either accepts it or says
// what is wrong as a usage error (exit 2); never a panic.
func FuzzAgentConfig(f *testing.F) {
	f.Add([]byte("web:\n  listen_address: \":9465\"\nmetrics:\n  labels: [port, comm]\n"))
	f.Add([]byte("tracer:\n  max_tracked: 10\n  ring_buffer_bytes: 4096\n  time_wait_poll: 2s\n"))
	f.Add([]byte("filter:\n  local_ports: [\"80\", \"443\"]\n  family: ipv6\nlogs:\n  sample: 0.5\n"))
	f.Add([]byte("logs: [1, 2]\n"))
	f.Add([]byte("{{{"))
	f.Add([]byte(""))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "agent.yml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := parseAgentConfig([]string{"--config.file", path}, nil)
		var ue *usageError
		if err != nil && !errors.As(err, &ue) {
			t.Fatalf("config error is not a usage error: %v", err)
		}
	})
}
