package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcpfsm/tcpfsm/exporter/logsink"
)

// LogSinkCollector makes the log file's metrics at each scrape, from the
// sink's counters: a failing log is seen here, not by /readyz (the agent
// keeps tracing and serving, and a restart would not free the disk).
//
//	tcpfsm_log_records_written_total          lines written whole
//	tcpfsm_log_records_dropped_total{reason}  queue_full, write_error
//	tcpfsm_log_write_errors_total             writes that failed
//	tcpfsm_log_queue_bytes                    lines waiting for the file
//	tcpfsm_log_queue_limit_bytes              their bound (logs.queue_bytes)
//	tcpfsm_log_reopens_total{result}          SIGHUP reopens: ok, error
type LogSinkCollector struct {
	stats                                  func() logsink.Stats
	written, dropped, errors, queue, limit *prometheus.Desc
	reopens                                *prometheus.Desc
}

// NewLogSink returns the collector of a sink's stats.
func NewLogSink(stats func() logsink.Stats) *LogSinkCollector {
	return &LogSinkCollector{stats: stats,
		written: prometheus.NewDesc("tcpfsm_log_records_written_total",
			"Log lines (connection records, and transitions when logged) written whole to the log file.", nil, nil),
		dropped: prometheus.NewDesc("tcpfsm_log_records_dropped_total",
			"Log lines dropped: the queue for the file was full (queue_full: the file is slower than the records), or the write failed (write_error).",
			[]string{"reason"}, nil),
		errors: prometheus.NewDesc("tcpfsm_log_write_errors_total",
			"Writes to the log file that failed (no space, I/O error, a broken pipe); the next write tries again.", nil, nil),
		queue: prometheus.NewDesc("tcpfsm_log_queue_bytes", "Bytes of log lines waiting for the log file, the write in progress included.", nil, nil),
		limit: prometheus.NewDesc("tcpfsm_log_queue_limit_bytes", "Bound of tcpfsm_log_queue_bytes (logs.queue_bytes): lines beyond it are dropped.", nil, nil),
		reopens: prometheus.NewDesc("tcpfsm_log_reopens_total",
			"Reopens of the log file on SIGHUP (log rotation), by result: ok, or error (the old file is kept).", []string{"result"}, nil),
	}
}

// Describe sends every descriptor.
func (c *LogSinkCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.written, c.dropped, c.errors, c.queue, c.limit, c.reopens} {
		ch <- d
	}
}

// Collect sends the sink's counters.
func (c *LogSinkCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.written, s.Written)
	counter(c.dropped, s.DroppedQueueFull, "queue_full")
	counter(c.dropped, s.DroppedWriteError, "write_error")
	counter(c.errors, s.WriteErrors)
	counter(c.reopens, s.Reopens, "ok")
	counter(c.reopens, s.ReopenErrors, "error")
	ch <- prometheus.MustNewConstMetric(c.queue, prometheus.GaugeValue, float64(s.QueueBytes))
	ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(s.QueueLimit))
}
