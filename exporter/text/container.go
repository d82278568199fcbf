package text

import (
	"strings"

	"github.com/tcpfsm/tcpfsm/tracer/clock"
	"github.com/tcpfsm/tcpfsm/tracer/lifecycle"
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

// The container column ends the trace and life tables of a tracer that
// names containers (a container runtime's socket was found or given):
// namespace/pod/container for a pod's container, the name of a plain
// one, runtime:<12 hex> for one the runtime did not name (yet), "-" for
// owners in no container. It is the last column and not padded: names
// are long and unbounded.

// ContainerHeader is the column's header.
const ContainerHeader = "CONTAINER"

// shortID is how long an id the column shows, as docker ps and crictl ps.
const shortID = 12

// AppendContainer appends the column's value: from m when the runtime
// named the container, else from container, the cgroup's "runtime:id".
func AppendContainer(b []byte, container string, m *metadata.Meta) []byte {
	switch {
	case m != nil && m.InPod():
		b = appendPrintableString(b, m.Pod.Namespace)
		b = append(b, '/')
		b = appendPrintableString(b, m.Pod.Name)
		if m.Name != "" {
			b = append(b, '/')
			b = appendPrintableString(b, m.Name)
		}
		return b
	case m != nil && m.Name != "":
		return appendPrintableString(b, m.Name)
	case m != nil:
		return appendShortID(b, m.Runtime, m.ID)
	case container != "":
		runtime, id, _ := strings.Cut(container, ":")
		return appendShortID(b, runtime, id)
	}
	return append(b, '-')
}

func appendShortID(b []byte, runtime, id string) []byte {
	b = appendPrintableString(b, runtime)
	b = append(b, ':')
	return appendPrintableString(b, id[:min(len(id), shortID)])
}

// withContainer puts the column before a row's newline.
func withContainer(b []byte, container string, m *metadata.Meta) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	b = append(b, "  "...)
	b = AppendContainer(b, container, m)
	return append(b, '\n')
}

func appendPrintableString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			c = '?'
		}
		b = append(b, c)
	}
	return b
}

// LifeHeaderContainer is LifeHeader with the container column.
func LifeHeaderContainer() string { return LifeHeader() + "  " + ContainerHeader }

// AppendLifeRowContainer is AppendLifeRow with the container column: the
// record's own names.
func AppendLifeRowContainer(b []byte, r *lifecycle.Record, c clock.Clock) []byte {
	return withContainer(AppendLifeRow(b, r, c), r.Container, r.Meta)
}

// EventHeaderContainer is EventHeader with the container column.
func EventHeaderContainer() string { return EventHeader() + "  " + ContainerHeader }

// AppendEventRowContainer is AppendEventRow with the container column:
// container is the owner's cgroup's "runtime:id" ("" for none), m what
// the runtime said of it (nil: nothing yet).
func AppendEventRowContainer(b []byte, e *probe.Event, c clock.Clock, container string, m *metadata.Meta) []byte {
	return withContainer(AppendEventRow(b, e, c), container, m)
}
