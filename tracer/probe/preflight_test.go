package probe

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestCheckCapabilities(t *testing.T) {
	bit := func(caps ...uint) func() (uint64, error) {
		return func() (uint64, error) {
			var m uint64
			for _, c := range caps {
				m |= 1 << c
			}
			return m, nil
		}
	}
	cases := []struct {
		name    string
		get     func() (uint64, error)
		missing []string // empty: allowed
	}{
		{"root-like", bit(capSysAdmin), nil},
		{"bpf and perfmon", bit(capBPF, capPerfmon), nil},
		{"nothing", bit(), []string{"CAP_BPF", "CAP_PERFMON"}},
		{"bpf only", bit(capBPF), []string{"CAP_PERFMON"}},
		{"perfmon only", bit(capPerfmon, 12), []string{"CAP_BPF"}},
	}
	for _, tc := range cases {
		err := checkCapabilities(tc.get)
		if len(tc.missing) == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrPrivileges) {
			t.Errorf("%s: got %v, want ErrPrivileges", tc.name, err)
			continue
		}
		for _, m := range tc.missing {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: %q does not name %s", tc.name, err, m)
			}
		}
	}
	if err := checkCapabilities(func() (uint64, error) { return 0, errors.New("boom") }); err == nil {
		t.Error("capget failure accepted")
	}
}

func TestOptionsValidation(t *testing.T) {
	var o Options
	if err := o.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if o.Attach != AttachAuto || o.RingBufferSize != 8<<20 || o.MaxConnections != 65536 ||
		o.FlushInterval != 50*time.Millisecond || o.WakeupBytes != o.RingBufferSize/16 {
		t.Errorf("defaults: %+v", o)
	}
	bad := []Options{
		{Attach: "kprobe"},
		{RingBufferSize: 3 << 20},
		{RingBufferSize: 1024},
		{RingBufferSize: MaxRingBufferSize + MinRingBufferSize},
		{MaxConnections: MaxMaxConnections + 1},
		{MaxConnections: -1},
		{FlushInterval: -time.Second},
		{WakeupBytes: 16 << 20},
	}
	if err := CheckRingBufferSize(MaxRingBufferSize); err != nil {
		t.Errorf("the largest ring buffer: %v", err)
	}
	big := int64(1) << 40 // as --ring-buffer-bytes 1099511627776 asked
	if CheckRingBufferSize(int(big)) == nil {
		t.Error("a ring buffer above the map's u32 size accepted")
	}
	for _, o := range bad {
		if err := o.setDefaults(); err == nil {
			t.Errorf("accepted %+v", o)
		}
	}
	if err := (&Filter{Family: 3}).validate(); err == nil {
		t.Error("family 3 accepted")
	}
	if err := (&Filter{LocalPorts: []uint16{0}}).validate(); err == nil {
		t.Error("local port 0 accepted")
	}
}

func TestPortBits(t *testing.T) {
	bits := portBits([]uint16{1, 63, 64, 443, 65535})
	for p := 0; p < 65536; p++ {
		set := bits[p>>6]>>(p&63)&1 == 1
		want := p == 1 || p == 63 || p == 64 || p == 443 || p == 65535
		if set != want {
			t.Errorf("port %d: bit %v, want %v", p, set, want)
		}
	}
}

func TestExplainLoadError(t *testing.T) {
	if err := explainLoadError(errors.New("x")); err == nil || errors.Is(err, ErrPrivileges) {
		t.Errorf("plain error explained as %v", err)
	}
	if err := explainLoadError(fmt.Errorf("load: %w", unix.EPERM)); !errors.Is(err, ErrPrivileges) ||
		!strings.Contains(err.Error(), "CAP_BPF") || !strings.Contains(err.Error(), "CAP_PERFMON") {
		t.Errorf("EPERM explained as %v", err)
	}
	if err := explainLoadError(fmt.Errorf("attach: %w", os.ErrNotExist)); !errors.Is(err, ErrNoHook) {
		t.Errorf("ENOENT explained as %v", err)
	}
}

// A kernel without BTF or ring buffers: one error naming the cause and
// what is needed, before anything is loaded.
func TestPreflightNamesTheMissingPiece(t *testing.T) {
	root := func() (uint64, error) { return 1 << capSysAdmin, nil }
	ok := func() error { return nil }
	no := func() error { return os.ErrNotExist }
	cases := []struct {
		name  string
		c     checks
		want  error
		words []string
	}{
		{"all there", checks{root, ok, ok, ok}, nil, nil},
		{"no privileges", checks{func() (uint64, error) { return 0, nil }, ok, ok, ok}, ErrPrivileges, []string{"CAP_BPF", "CAP_PERFMON"}},
		{"no BTF file", checks{root, no, ok, ok}, ErrNoBTF, []string{"CONFIG_DEBUG_INFO_BTF"}},
		{"BTF unreadable", checks{root, ok, func() error { return errors.New("bad magic") }, ok}, ErrNoBTF, []string{"bad magic"}},
		{"no ring buffer", checks{root, ok, ok, func() error { return errors.New("not supported") }}, ErrNoRingBuf, []string{"5.8"}},
		// A container's default seccomp profile refuses bpf() with EPERM
		// even with CAP_BPF: that is not an old kernel.
		{"bpf refused", checks{root, ok, ok, func() error { return fmt.Errorf("map create: %w", unix.EPERM) }}, ErrPrivileges, []string{"seccomp", "bpf()"}},
	}
	for _, tc := range cases {
		err := tc.c.run()
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
			continue
		}
		for _, w := range tc.words {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", tc.name, err, w)
			}
		}
	}
}
