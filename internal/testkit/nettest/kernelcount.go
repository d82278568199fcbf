package nettest

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// KernelCount counts what the kernel itself reports on the
// inet_sock_set_state tracepoint for one namespace: every call, by old and
// new state. It is a second, minimal program on the same tracepoint,
// sharing no code with tcpfsm's, so a test can compare what tcpfsm
// received with what the kernel made, instead of with what a scenario
// is expected to make. (At a mass close the kernel now and then moves a
// socket from FIN_WAIT1 to FIN_WAIT2 without a call on the tracepoint:
// an expectation of "10 events a pair" is then wrong, not tcpfsm.)
type KernelCount struct {
	counts *ebpf.Map
	progs  []*ebpf.Program
	links  []link.Link
}

// CountKernel attaches the counter for the namespace; it is detached when
// the test ends. Attach it before the tracer, so that its count covers
// everything the tracer can see.
func (n *NS) CountKernel(t testing.TB) *KernelCount {
	t.Helper()
	k, err := countKernel(n.Inode)
	if err != nil {
		t.Fatalf("kernel transition counter: %v", err)
	}
	t.Cleanup(k.close)
	return k
}

func countKernel(netns uint32) (*KernelCount, error) {
	offNet, offInum, offProto, err := sockOffsets()
	if err != nil {
		return nil, err
	}
	counts, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 256})
	if err != nil {
		return nil, err
	}
	k := &KernelCount{counts: counts}
	for _, a := range []struct {
		tp  string
		key int32 // -1: the transition's, old<<4 | new
	}{{"inet_sock_set_state", -1}, {"tcp_receive_reset", keyResetReceived}, {"tcp_send_reset", keyResetSent}} {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: "nettest_count", Type: ebpf.RawTracepoint, License: "GPL",
			Instructions: countInsns(counts, netns, offNet, offInum, offProto, a.key),
		})
		if err != nil {
			k.close()
			return nil, fmt.Errorf("%s: %w", a.tp, err)
		}
		k.progs = append(k.progs, prog)
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: a.tp, Program: prog})
		if err != nil {
			k.close()
			return nil, fmt.Errorf("%s: %w", a.tp, err)
		}
		k.links = append(k.links, l)
	}
	return k, nil
}

// Keys above every transition's (states are below 13).
const (
	keyResetReceived = 255
	keyResetSent     = 254
)

// countInsns counts one call of a tracepoint whose first argument is the
// socket, under key, or, for key -1, under the transition in its second
// and third arguments (inet_sock_set_state). Only TCP sockets (MPTCP's,
// which Go's listeners are since Go 1.24, call inet_sock_set_state too),
// in the namespace sk->__sk_common.skc_net.net->ns.inum.
func countInsns(counts *ebpf.Map, netns, offNet, offInum, offProto uint32, key int32) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R3, asm.R6, 0, asm.DWord),
		asm.JEq.Imm(asm.R3, 0, "exit"), // a reset sent without a socket
	}
	if key != keyResetSent {
		// (A time-wait socket, which can send a reset, has no sk_protocol.)
		insns = append(insns,
			asm.Add.Imm(asm.R3, int32(offProto)),
			asm.Mov.Reg(asm.R1, asm.RFP),
			asm.Add.Imm(asm.R1, -24),
			asm.Mov.Imm(asm.R2, 2),
			asm.FnProbeReadKernel.Call(),
			asm.JNE.Imm(asm.R0, 0, "exit"),
			asm.LoadMem(asm.R0, asm.RFP, -24, asm.Half),
			asm.JNE.Imm(asm.R0, 6, "exit"), // IPPROTO_TCP
		)
	}
	insns = append(insns,
		asm.LoadMem(asm.R3, asm.R6, 0, asm.DWord),
		asm.Add.Imm(asm.R3, int32(offNet)),
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, -8),
		asm.Mov.Imm(asm.R2, 8),
		asm.FnProbeReadKernel.Call(),
		asm.JNE.Imm(asm.R0, 0, "exit"),
		asm.LoadMem(asm.R3, asm.RFP, -8, asm.DWord),
		asm.Add.Imm(asm.R3, int32(offInum)),
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, -16),
		asm.Mov.Imm(asm.R2, 4),
		asm.FnProbeReadKernel.Call(),
		asm.JNE.Imm(asm.R0, 0, "exit"),
		asm.LoadMem(asm.R0, asm.RFP, -16, asm.Word),
		asm.JNE.Imm32(asm.R0, int32(netns), "exit"),
	)
	if key < 0 {
		insns = append(insns,
			asm.LoadMem(asm.R1, asm.R6, 8, asm.DWord),
			asm.And.Imm(asm.R1, 15),
			asm.LSh.Imm(asm.R1, 4),
			asm.LoadMem(asm.R2, asm.R6, 16, asm.DWord),
			asm.And.Imm(asm.R2, 15),
			asm.Or.Reg(asm.R1, asm.R2),
		)
	} else {
		insns = append(insns, asm.Mov.Imm(asm.R1, key))
	}
	return append(insns,
		asm.StoreMem(asm.RFP, -20, asm.R1, asm.Word),
		asm.LoadMapPtr(asm.R1, counts.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -20),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "exit"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("exit"),
		asm.Return(),
	)
}

func (k *KernelCount) close() {
	for _, l := range k.links {
		l.Close()
	}
	for _, p := range k.progs {
		p.Close()
	}
	k.counts.Close()
}

// Transitions are the kernel's calls so far, by "OLD->NEW", and the calls
// the counter itself was skipped for, in any namespace (it was running on
// that CPU already): the counts are short by at most that many.
func (k *KernelCount) Transitions() (map[string]uint64, uint64, error) {
	out := map[string]uint64{}
	for key := uint32(0); key < keyResetSent; key++ {
		n, err := k.count(key)
		if err != nil {
			return nil, 0, err
		}
		if n > 0 {
			out[probe.State(key>>4).String()+"->"+probe.State(key&15).String()] = n
		}
	}
	st, err := k.progs[0].Stats()
	if err != nil {
		return nil, 0, err
	}
	return out, st.RecursionMisses, nil
}

// Resets are the kernel's calls of tcp_receive_reset and tcp_send_reset
// for the namespace's sockets (a reset sent without one is not counted).
func (k *KernelCount) Resets() (received, sent uint64, err error) {
	if received, err = k.count(keyResetReceived); err != nil {
		return 0, 0, err
	}
	sent, err = k.count(keyResetSent)
	return received, sent, err
}

func (k *KernelCount) count(key uint32) (uint64, error) {
	var n uint64
	err := k.counts.Lookup(key, &n)
	return n, err
}

// sockOffsets finds, in the running kernel's BTF, where struct sock
// keeps its struct net pointer (its struct sock_common is first) and its
// protocol, and where struct net keeps its inode.
func sockOffsets() (offNet, offInum, offProto uint32, err error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return 0, 0, 0, err
	}
	var sc, sk, net, nsc *btf.Struct
	for name, s := range map[string]**btf.Struct{"sock_common": &sc, "sock": &sk, "net": &net, "ns_common": &nsc} {
		if err := spec.TypeByName(name, s); err != nil {
			return 0, 0, 0, fmt.Errorf("struct %s: %w", name, err)
		}
	}
	var ns, inum uint32
	for _, f := range []struct {
		s    *btf.Struct
		name string
		off  *uint32
	}{{sc, "skc_net", &offNet}, {sk, "sk_protocol", &offProto}, {net, "ns", &ns}, {nsc, "inum", &inum}} {
		if *f.off, err = memberOffset(f.s, f.name); err != nil {
			return 0, 0, 0, fmt.Errorf("struct %s: %w", f.s.Name, err)
		}
	}
	return offNet, ns + inum, offProto, nil
}

// memberOffset is a member's byte offset, looking into anonymous structs
// and unions on the way.
func memberOffset(s btf.Type, name string) (uint32, error) {
	var members []btf.Member
	switch c := s.(type) {
	case *btf.Struct:
		members = c.Members
	case *btf.Union:
		members = c.Members
	default:
		return 0, errors.New("not a composite type")
	}
	for _, m := range members {
		if m.Name == name {
			return m.Offset.Bytes(), nil
		}
		if m.Name == "" {
			if off, err := memberOffset(btf.UnderlyingType(m.Type), name); err == nil {
				return m.Offset.Bytes() + off, nil
			}
		}
	}
	return 0, fmt.Errorf("no member %s", name)
}
