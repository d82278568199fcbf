package lifecycle

import (
	"fmt"
	"time"
)

// Config bounds and tunes a Builder. The zero value takes the defaults.
type Config struct {
	// MaxTracked caps the records held at once, open connections and
	// those in TIME_WAIT: 1 to MaxMaxTracked. At the cap the least
	// recently active record is evicted. Default DefaultMaxTracked.
	MaxTracked int
	// HandshakeTimeout evicts a record stuck in SYN_SENT or SYN_RECV,
	// whose end was missed. Default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// ResetHold is how long a closed record waits for the RST the kernel
	// sends after a CLOSE (close() with unread data, SO_LINGER 0).
	// Default DefaultResetHold.
	ResetHold time.Duration
	// ExactTimeWait: the kernel flags closes into TIME_WAIT and reports
	// their end (fentry). Without it both are reconstructed.
	ExactTimeWait bool
}

// Defaults and limits of Config, for commands to offer and show.
const (
	// DefaultMaxTracked is the kernel's usual tcp_max_tw_buckets.
	DefaultMaxTracked = 262144
	// MaxMaxTracked bounds the records' memory (about 250 bytes an open
	// one: 4 GB here), well within the table's int32 indexes.
	MaxMaxTracked = 1 << 24
	// DefaultHandshakeTimeout is longer than connect() retries with the
	// default tcp_syn_retries (about 127 s).
	DefaultHandshakeTimeout = 3 * time.Minute
	DefaultResetHold        = 5 * time.Millisecond
)

// Validate checks the configuration; zero fields take their defaults.
func (c Config) Validate() error {
	if c.MaxTracked < 0 || c.MaxTracked > MaxMaxTracked {
		return fmt.Errorf("max tracked %d: want 1 to %d", c.MaxTracked, MaxMaxTracked)
	}
	if c.HandshakeTimeout < 0 {
		return fmt.Errorf("handshake timeout %s: must be positive", c.HandshakeTimeout)
	}
	if c.ResetHold < 0 {
		return fmt.Errorf("reset hold %s: must be positive", c.ResetHold)
	}
	return nil
}

// setDefaults fills the zero fields; NewBuilder takes a negative cap as
// the default too, as it always has.
func (c *Config) setDefaults() {
	if c.MaxTracked <= 0 {
		c.MaxTracked = DefaultMaxTracked
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.ResetHold <= 0 {
		c.ResetHold = DefaultResetHold
	}
}
