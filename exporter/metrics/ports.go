package metrics

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// EphemeralPorts counts the local ports connect() picks from in the
// network namespace procSys belongs to (normally "/proc/sys", the
// reader's own namespace): the range net.ipv4.ip_local_port_range, less
// the ports net.ipv4.ip_local_reserved_ports keeps out of it. The
// kernel's default range, 32768-60999, is 28232 ports.
func EphemeralPorts(procSys string) (int, error) {
	dir := filepath.Join(procSys, "net", "ipv4")
	b, err := os.ReadFile(filepath.Join(dir, "ip_local_port_range"))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, fmt.Errorf("ip_local_port_range: %q: want two ports", b)
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo > hi {
		return 0, fmt.Errorf("ip_local_port_range: %q: want two ports, low first", b)
	}
	n := int(hi - lo + 1)
	// Reserved ports: "8080,9000-9100", or empty. Missing on old kernels.
	b, err = os.ReadFile(filepath.Join(dir, "ip_local_reserved_ports"))
	if err != nil {
		return n, nil //nolint:nilerr // no reserved ports to take out
	}
	reserved := map[uint64]bool{}
	for _, r := range strings.Split(strings.TrimSpace(string(b)), ",") {
		if r == "" {
			continue
		}
		a, z, isRange := strings.Cut(r, "-")
		first, err1 := strconv.ParseUint(a, 10, 16)
		last, err2 := first, error(nil)
		if isRange {
			last, err2 = strconv.ParseUint(z, 10, 16)
		}
		if err1 != nil || err2 != nil || first > last {
			return 0, fmt.Errorf("ip_local_reserved_ports: bad entry %q", r)
		}
		for p := max(first, lo); p <= min(last, hi); p++ {
			reserved[p] = true
		}
	}
	return n - len(reserved), nil
}
