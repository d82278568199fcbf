package nettest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

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

// ProcessObjects lists the BPF programs and links a process holds open,
// read from the fdinfo of its file descriptors: unlike KernelObjects it
// does not see what other processes (a test running in parallel, another
// package's test binary) load and unload meanwhile.
func ProcessObjects(pid int) (progs map[ebpf.ProgramID]bool, links map[link.ID]bool, err error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	progs, links = map[ebpf.ProgramID]bool{}, map[link.ID]bool{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		// A link's fdinfo names its program too (prog_id); only a
		// program's own fd counts as holding the program.
		var linkID, progID uint64
		for _, line := range strings.Split(string(b), "\n") {
			key, val, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			n, err := strconv.ParseUint(strings.TrimSpace(val), 10, 32)
			if err != nil {
				continue
			}
			switch key {
			case "link_id":
				linkID = n
			case "prog_id":
				progID = n
			}
		}
		switch {
		case linkID != 0:
			links[link.ID(linkID)] = true
		case progID != 0:
			progs[ebpf.ProgramID(progID)] = true
		}
	}
	return progs, links, nil
}
