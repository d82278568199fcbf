// Package discover picks the metadata sources of a host: the CRI runtime
// and the Docker Engine compatible sockets found at their standard paths,
// or the endpoints a user gave.
package discover

import (
	"fmt"
	"os"

	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/metadata/cri"
	"github.com/tcpfsm/tcpfsm/tracer/metadata/engine"
)

// None turns a kind of source off.
const None = "none"

// Options choose the sources; the zero value finds them.
type Options struct {
	// CRIEndpoint is the CRI socket (--cri.endpoint): a path or
	// unix:///path, None for no CRI source, "" for the first of
	// cri.DefaultEndpoints that exists. A given endpoint is used even
	// when its socket is not there yet: the resolver retries it, so an
	// agent started before the runtime names pods once it is up.
	CRIEndpoint string
	// EngineEndpoints are Docker Engine or podman API sockets; nil finds
	// engine.DefaultEndpoints that exist, [None] uses none.
	EngineEndpoints []string
}

// Sources returns the sources the options name; an error is a malformed
// endpoint (a usage error).
func Sources(o Options) ([]metadata.Source, error) {
	return find(o, cri.DefaultEndpoints, engine.DefaultEndpoints)
}

func find(o Options, criDefaults []cri.Endpoint, engineDefaults []engine.Endpoint) ([]metadata.Source, error) {
	var out []metadata.Source
	switch o.CRIEndpoint {
	case None:
	case "":
		for _, e := range criDefaults {
			if isSocket(e.Path) {
				s, err := cri.New(e.Path, e.Runtime)
				if err != nil {
					return nil, err
				}
				out = append(out, s)
				break
			}
		}
	default:
		s, err := cri.New(o.CRIEndpoint, "")
		if err != nil {
			return nil, fmt.Errorf("--cri.endpoint: %w", err)
		}
		out = append(out, s)
	}
	switch {
	case len(o.EngineEndpoints) == 1 && o.EngineEndpoints[0] == None:
	case o.EngineEndpoints == nil:
		for _, e := range engineDefaults {
			if isSocket(e.Path) {
				s, err := engine.New(e.Path, e.Runtime)
				if err != nil {
					return nil, err
				}
				out = append(out, s)
			}
		}
	default:
		for _, ep := range o.EngineEndpoints {
			s, err := engine.New(ep, "")
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
	}
	return out, nil
}

func isSocket(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}
