package probe

import (
	"encoding/binary"
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

// nestRig runs the state program's two instances by hand (BPF_PROG_TEST_RUN,
// all on CPU 0), in the orders the kernel runs them in when interrupts
// nest, without attaching them. Their sockets are made up: the programs
// note and search their calls before they read the socket, which then
// fails and ends the run.
type nestRig struct {
	t            *testing.T
	main, nested *ebpf.Program
	nest         *ebpf.Map
	cpus         int
}

func newNestRig(t *testing.T) *nestRig {
	t.Helper()
	if err := Preflight(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and BPF programs cannot be loaded: %v", err)
		}
		t.Skipf("needs BPF privileges (run as root): %v", err)
	}
	spec, err := loadTcpfsm()
	if err != nil {
		t.Fatal(err)
	}
	for name := range spec.Programs {
		if name != tcpfsmProgRawInetSockSetState && name != tcpfsmProgRawNestedInetSockSetState {
			delete(spec.Programs, name)
		}
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(coll.Close)
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	return &nestRig{t: t, main: coll.Programs[tcpfsmProgRawInetSockSetState],
		nested: coll.Programs[tcpfsmProgRawNestedInetSockSetState], nest: coll.Maps[tcpfsmMapNest], cpus: cpus}
}

// run runs prog for the call (sk, oldstate, newstate) on CPU 0.
func (r *nestRig) run(prog *ebpf.Program, sk uint64, oldstate, newstate State) {
	r.t.Helper()
	ctx := make([]byte, 24)
	binary.NativeEndian.PutUint64(ctx[0:], sk)
	binary.NativeEndian.PutUint64(ctx[8:], uint64(oldstate))
	binary.NativeEndian.PutUint64(ctx[16:], uint64(newstate))
	if _, err := prog.Run(&ebpf.RunOptions{Context: ctx, CPU: 0, Flags: 1 /* BPF_F_TEST_RUN_ON_CPU */}); err != nil {
		r.t.Fatal(err)
	}
}

func (r *nestRig) cpu0() tcpfsmNest {
	r.t.Helper()
	v := make([]tcpfsmNest, r.cpus)
	if err := r.nest.Lookup(uint32(0), &v); err != nil {
		r.t.Fatal(err)
	}
	return v[0]
}

func (r *nestRig) setCPU0(n tcpfsmNest) {
	r.t.Helper()
	v := make([]tcpfsmNest, r.cpus)
	if err := r.nest.Lookup(uint32(0), &v); err != nil {
		r.t.Fatal(err)
	}
	v[0] = n
	if err := r.nest.Update(uint32(0), v, ebpf.UpdateExist); err != nil {
		r.t.Fatal(err)
	}
}

// The nested instance finds the note of the call it runs for, whatever
// the main program noted above it meanwhile, and handles only the calls
// the main program was skipped for.
func TestNestedInstanceFindsItsCall(t *testing.T) {
	r := newNestRig(t)
	const w = 0xffff_8880_0000_1000 // the pending call's socket
	other := func(i int) uint64 { return 0xffff_8880_0100_0000 + uint64(i)<<12 }

	// An interrupt after the main program ran for w, before the nested one
	// searched for it (in the kernel's part of its run): ten transitions,
	// each run by the main program, its nested runs skipped (the instance
	// busy). Searched four deep, w's note was not found under them and w
	// was handled a second time (6.12 under qemu).
	r.run(r.main, w, StateEstablished, StateFinWait1)
	for i := range 10 {
		r.run(r.main, other(i), StateFinWait1, StateFinWait2)
	}
	r.run(r.nested, w, StateEstablished, StateFinWait1)
	if n := r.cpu0(); n.Handled != 0 {
		t.Fatalf("the nested instance handled %d calls, want 0: the main program ran for w", n.Handled)
	}

	// While the nested instance runs (busy), the main program notes none
	// of the calls it runs for in an interrupt: their nested runs are
	// skipped, and the pending call's note stays the newest.
	r.run(r.main, w+1<<12, StateSynSent, StateEstablished)
	n := r.cpu0()
	n.Busy = 1
	r.setCPU0(n)
	for i := range 2 * len(n.Call) {
		r.run(r.main, other(100+i), StateEstablished, StateCloseWait)
	}
	if got := r.cpu0(); got.Top != n.Top {
		t.Errorf("the main program noted %d calls while the nested instance was busy, want none", got.Top-n.Top)
	}
	n = r.cpu0()
	n.Busy = 0
	r.setCPU0(n)
	r.run(r.nested, w+1<<12, StateSynSent, StateEstablished)
	if n := r.cpu0(); n.Handled != 0 || n.Busy != 0 {
		t.Fatalf("handled %d, busy %d after the nested run; want 0 and 0", n.Handled, n.Busy)
	}

	// A call the main program was skipped for (it was running, an
	// interrupt) is the nested instance's, under pending notes too.
	r.run(r.main, w+2<<12, StateEstablished, StateFinWait1)
	r.run(r.nested, other(1000), StateSynRecv, StateEstablished) // main skipped for it
	r.run(r.nested, w+2<<12, StateEstablished, StateFinWait1)
	if n := r.cpu0(); n.Handled != 1 {
		t.Errorf("the nested instance handled %d calls, want 1 (the one the main program was skipped for)", n.Handled)
	}
}
