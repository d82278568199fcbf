package main

import (
	"io"
	"log/slog"
	"time"

	"github.com/tcpfsm/tcpfsm/exporter/logsink"
)

// logCloseTimeout bounds the wait for the log at exit: the unit gives the
// agent 30 s to stop, a stalled pipe must not take them all.
const logCloseTimeout = 5 * time.Second

// openLog opens the agent's record log: the file (in append mode, checked
// now: one that cannot be written is a configuration error) or stdout,
// behind a sink that never holds up the event path. Its failures and
// reopens are told on log, write errors at most once a minute.
func openLog(cfg *agentConfig, stdout io.Writer, log *slog.Logger) (*logsink.Sink, error) {
	opts := logsink.Options{QueueBytes: cfg.logQueue}
	var f logsink.File
	path := cfg.logFile
	if path == "-" {
		f = stdoutFile{stdout}
		path = "stdout"
	} else {
		of, err := logsink.OpenFile(path)
		if err != nil {
			return nil, usagef("invalid %s: %v", agentName("logs.file"), err)
		}
		f = of
		opts.Open = func() (logsink.File, error) { return logsink.OpenFile(cfg.logFile) }
	}
	opts.Report = func(r logsink.Report) {
		switch {
		case r.Kind == logsink.WriteFailed:
			log.Warn("log write failed: the records of that write are dropped, the next write tries again (tcpfsm_log_records_dropped_total; this is said at most once a minute)",
				"file", path, "err", r.Err.Error(), "write_errors", r.Errors, "records_dropped", r.Dropped)
		case r.Kind == logsink.Resumed:
			log.Info("log writes succeed again", "file", path, "write_errors_unreported", r.Errors, "records_dropped_unreported", r.Dropped)
		case r.Err != nil:
			log.Warn("could not reopen the log file: still writing to the one open", "file", path, "err", r.Err.Error())
		default:
			log.Info("reopened the log file", "file", path)
		}
	}
	return logsink.New(f, opts), nil
}

// stdoutFile is stdout as the sink's file: the agent does not close it.
type stdoutFile struct{ io.Writer }

func (stdoutFile) Close() error { return nil }
