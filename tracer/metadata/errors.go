package metadata

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Reason classifies a source's failure, for
// tcpfsm_metadata_errors_total{reason}: a few fixed values.
type Reason uint8

const (
	ReasonSocketMissing    Reason = iota // no socket at the endpoint: runtime not installed or not running
	ReasonPermissionDenied               // the socket exists but may not be opened
	ReasonUnavailable                    // refused or dropped: the runtime is restarting or overloaded
	ReasonTimeout                        // no answer in time
	ReasonUnsupportedAPI                 // the runtime does not serve the API version asked for (CRI v1, Docker's /containers/json)
	ReasonBadResponse                    // an answer that does not decode
	ReasonOther
	NumReasons
)

var reasonNames = [NumReasons]string{
	"socket_missing", "permission_denied", "unavailable", "timeout", "unsupported_api", "bad_response", "other",
}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", r)
}

// Error is a source's failure with its reason.
type Error struct {
	Reason Reason
	Err    error
}

func (e *Error) Error() string { return e.Reason.String() + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Errorf wraps err with a reason; sources use it where the reason is not
// in the error's chain (a gRPC status, an HTTP status).
func Errorf(r Reason, format string, args ...any) error {
	return &Error{Reason: r, Err: fmt.Errorf(format, args...)}
}

// ReasonOf classifies an error: an *Error's own reason, else the errno
// or context error in its chain.
func ReasonOf(err error) Reason {
	var e *Error
	switch {
	case err == nil:
		return ReasonOther
	case errors.As(err, &e):
		return e.Reason
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ENOENT):
		return ReasonSocketMissing
	case errors.Is(err, os.ErrPermission), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return ReasonPermissionDenied
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ReasonUnavailable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return ReasonTimeout
	}
	return ReasonOther
}
