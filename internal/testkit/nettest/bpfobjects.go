package nettest

import (
	"errors"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// KernelObjects lists the BPF programs (id: name) and links loaded in the
// kernel, whoever loaded them.
func KernelObjects() (progs map[ebpf.ProgramID]string, links map[link.ID]bool, err error) {
	progs = map[ebpf.ProgramID]string{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		if info, err := p.Info(); err == nil {
			progs[id] = info.Name
		}
		p.Close()
	}
	links = map[link.ID]bool{}
	it := new(link.Iterator)
	for it.Next() {
		links[it.ID] = true
	}
	return progs, links, it.Err()
}
