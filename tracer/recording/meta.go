package recording

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/metadata"
)

// MetaOp says what a KindMeta input tells.
type MetaOp uint8

const (
	// MetaEnabled: the session names containers from then on (it has a
	// metadata resolver): records of containers not named yet wait for
	// their answer, at most Wait, and with Peers those of node-local
	// connections for the other end's record. Written once, at the start.
	MetaEnabled MetaOp = iota + 1
	// MetaContainer: the answer for one container (Meta.Runtime and
	// Meta.ID): its metadata when Known, else that it is not named.
	MetaContainer
	// MetaPodIP: a pod sandbox on this node has the IP Meta.Pod.IP.
	MetaPodIP
	// MetaPodIPGone: no sandbox has the IP Meta.Pod.IP anymore.
	MetaPodIPGone
	metaOps
)

var metaOpNames = [...]string{MetaEnabled: "enabled", MetaContainer: "container", MetaPodIP: "pod_ip", MetaPodIPGone: "pod_ip_gone"}

func (o MetaOp) String() string {
	if o >= MetaEnabled && o < metaOps {
		return metaOpNames[o]
	}
	return fmt.Sprintf("meta_op(%d)", uint8(o))
}

// Meta is a KindMeta input: what the container runtime told the session,
// at the point of the input stream where the session learnt it, so that
// a replay names the records the live run named.
type Meta struct {
	Op    MetaOp
	Known bool // MetaContainer: the runtime named it
	Meta  metadata.Meta
	// MetaEnabled: how long records wait, and whether for their peer too.
	Wait  time.Duration
	Peers bool
}

// Payload, little endian, after WriteInput's framing:
//
//	op u8, flags u8 (known 1, sandbox 2, peers 4), reserved u16, then
//	for MetaEnabled: wait ns u64; for the others:
//	strings, each u16 length + bytes: runtime, id, name, image, pod namespace, pod name, pod uid,
//	  workload kind, workload name, workload source,
//	pod IP: u8 length (0, 4 or 16) + bytes,
//	labels: u16 count, then key and value as strings, sorted by key.
//
// Labels that do not fit MaxPayload are left out, last keys first.
const (
	metaMin         = 4
	metaFlagKnown   = 1
	metaFlagSandbox = 2
	metaFlagPeers   = 4
)

func appendMeta(b []byte, m *Meta) ([]byte, error) {
	start := len(b)
	md := &m.Meta
	flags := uint8(0)
	if m.Known {
		flags |= metaFlagKnown
	}
	if md.Sandbox {
		flags |= metaFlagSandbox
	}
	if m.Peers {
		flags |= metaFlagPeers
	}
	b = append(b, uint8(m.Op), flags, 0, 0)
	if m.Op == MetaEnabled {
		return binary.LittleEndian.AppendUint64(b, uint64(m.Wait)), nil
	}
	for _, s := range [...]string{md.Runtime, md.ID, md.Name, md.Image, md.Pod.Namespace, md.Pod.Name, md.Pod.UID,
		md.Pod.Workload.Kind, md.Pod.Workload.Name, md.Pod.Workload.Source} {
		b = appendString16(b, s)
	}
	switch ip := md.Pod.IP; {
	case !ip.IsValid():
		b = append(b, 0)
	case ip.Is4():
		a := ip.As4()
		b = append(append(b, 4), a[:]...)
	default:
		a := ip.As16()
		b = append(append(b, 16), a[:]...)
	}
	if len(b)-start+2 > MaxPayload {
		return b[:start], fmt.Errorf("write input: metadata of %s:%s does not fit %d bytes", md.Runtime, md.ID, MaxPayload)
	}
	keys := make([]string, 0, len(md.Pod.Labels))
	for k := range md.Pod.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	n := 0
	size := len(b) - start + 2
	for _, k := range keys {
		size += 4 + len(k) + len(md.Pod.Labels[k])
		if size > MaxPayload {
			break
		}
		n++
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(n))
	for _, k := range keys[:n] {
		b = appendString16(b, k)
		b = appendString16(b, md.Pod.Labels[k])
	}
	return b, nil
}

func appendString16(b []byte, s string) []byte {
	if len(s) > 0xffff {
		s = s[:0xffff]
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func decodeMeta(p []byte, m *Meta) error {
	bad := func(what string) error { return fmt.Errorf("%w meta record: %s", ErrBadInput, what) }
	if len(p) < metaMin {
		return bad(fmt.Sprintf("%d bytes", len(p)))
	}
	*m = Meta{Op: MetaOp(p[0]), Known: p[1]&metaFlagKnown != 0}
	if m.Op < MetaEnabled || m.Op >= metaOps {
		return bad(fmt.Sprintf("op %d", p[0]))
	}
	if p[1]&^(metaFlagKnown|metaFlagSandbox|metaFlagPeers) != 0 || p[2] != 0 || p[3] != 0 {
		return bad("reserved bits set")
	}
	md := &m.Meta
	md.Sandbox = p[1]&metaFlagSandbox != 0
	m.Peers = p[1]&metaFlagPeers != 0
	rest := p[metaMin:]
	if m.Op == MetaEnabled {
		if len(rest) != 8 || p[1]&^metaFlagPeers != 0 {
			return bad("enabled: want only the wait and the peers flag")
		}
		m.Wait = time.Duration(binary.LittleEndian.Uint64(rest))
		return nil
	}
	str := func() (string, bool) {
		if len(rest) < 2 {
			return "", false
		}
		n := int(binary.LittleEndian.Uint16(rest))
		if len(rest) < 2+n {
			return "", false
		}
		s := string(rest[2 : 2+n])
		rest = rest[2+n:]
		return s, true
	}
	for _, dst := range [...]*string{&md.Runtime, &md.ID, &md.Name, &md.Image, &md.Pod.Namespace, &md.Pod.Name, &md.Pod.UID,
		&md.Pod.Workload.Kind, &md.Pod.Workload.Name, &md.Pod.Workload.Source} {
		s, ok := str()
		if !ok {
			return bad("truncated string")
		}
		*dst = s
	}
	if len(rest) < 1 {
		return bad("no IP")
	}
	switch n := int(rest[0]); {
	case n == 0:
	case (n == 4 || n == 16) && len(rest) >= 1+n:
		ip, _ := netip.AddrFromSlice(rest[1 : 1+n])
		md.Pod.IP = ip
	default:
		return bad(fmt.Sprintf("IP of %d bytes", n))
	}
	rest = rest[1+int(rest[0]):]
	if len(rest) < 2 {
		return bad("no label count")
	}
	n := int(binary.LittleEndian.Uint16(rest))
	rest = rest[2:]
	if n > 0 {
		md.Pod.Labels = make(map[string]string, n)
	}
	for range n {
		k, ok := str()
		v, ok2 := str()
		if !ok || !ok2 {
			return bad("truncated label")
		}
		md.Pod.Labels[k] = v
	}
	if len(rest) != 0 {
		return bad(fmt.Sprintf("%d bytes after the labels", len(rest)))
	}
	switch {
	case (m.Op == MetaContainer) && (md.Runtime == "" || md.ID == ""):
		return bad("container answer without runtime and id")
	case (m.Op == MetaPodIP || m.Op == MetaPodIPGone) && !md.Pod.IP.IsValid():
		return bad("pod IP op without an IP")
	}
	return nil
}
