package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tcpfsm/tcpfsm/exporter/logsink"
)

func TestLogSinkMetrics(t *testing.T) {
	st := logsink.Stats{Written: 10, DroppedQueueFull: 3, DroppedWriteError: 4, WriteErrors: 2, Reopens: 5, ReopenErrors: 1,
		QueueBytes: 700, QueueLimit: 4096}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewLogSink(func() logsink.Stats { return st }))
	want := `
# HELP tcpfsm_log_queue_bytes Bytes of log lines waiting for the log file, the write in progress included.
# TYPE tcpfsm_log_queue_bytes gauge
tcpfsm_log_queue_bytes 700
# HELP tcpfsm_log_queue_limit_bytes Bound of tcpfsm_log_queue_bytes (logs.queue_bytes): lines beyond it are dropped.
# TYPE tcpfsm_log_queue_limit_bytes gauge
tcpfsm_log_queue_limit_bytes 4096
# HELP tcpfsm_log_records_dropped_total Log lines dropped: the queue for the file was full (queue_full: the file is slower than the records), or the write failed (write_error).
# TYPE tcpfsm_log_records_dropped_total counter
tcpfsm_log_records_dropped_total{reason="queue_full"} 3
tcpfsm_log_records_dropped_total{reason="write_error"} 4
# HELP tcpfsm_log_records_written_total Log lines (connection records, and transitions when logged) written whole to the log file.
# TYPE tcpfsm_log_records_written_total counter
tcpfsm_log_records_written_total 10
# HELP tcpfsm_log_reopens_total Reopens of the log file on SIGHUP (log rotation), by result: ok, or error (the old file is kept).
# TYPE tcpfsm_log_reopens_total counter
tcpfsm_log_reopens_total{result="error"} 1
tcpfsm_log_reopens_total{result="ok"} 5
# HELP tcpfsm_log_write_errors_total Writes to the log file that failed (no space, I/O error, a broken pipe); the next write tries again.
# TYPE tcpfsm_log_write_errors_total counter
tcpfsm_log_write_errors_total 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
