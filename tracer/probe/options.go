package probe

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// Options configure Open. The zero value traces everything with defaults.
type Options struct {
	Filter Filter
	Attach Attach
	// RingBufferSize is the ring buffer's size in bytes: a power of two
	// from MinRingBufferSize to MaxRingBufferSize. Default
	// DefaultRingBufferSize.
	RingBufferSize int
	// MaxConnections bounds the kernel's per-socket table (an LRU), 1 to
	// MaxMaxConnections. Default DefaultMaxConnections.
	MaxConnections int
	// FlushInterval bounds how long an event may wait in the ring buffer
	// when traffic is light: the kernel does not wake the reader for each
	// event, the reader polls this often. Default DefaultFlushInterval.
	FlushInterval time.Duration
	// WakeupBytes makes the kernel wake the reader once that much data
	// waits, so bursts are drained early: 1 to the ring's size. Default
	// DefaultWakeupBytes of the ring's size.
	WakeupBytes int
}

// Defaults and limits of Options, for commands to offer and show.
const (
	DefaultRingBufferSize = 8 << 20
	// MaxRingBufferSize is the largest power of two a ring buffer map's
	// max_entries (a u32) holds, and an int holds.
	MaxRingBufferSize = 1 << (31 - (64-intSize)/32)

	DefaultMaxConnections = 65536
	// MinMaxConnections is the smallest table worth offering: the kernel's
	// LRU hands out free entries to each CPU in batches, so a smaller one
	// evicts long before it is full. Open takes any size from 1 (tests
	// use tiny tables to force evictions).
	MinMaxConnections = 64
	// MaxMaxConnections bounds the preallocated table (about 128 bytes an
	// entry: 537 MB at this size).
	MaxMaxConnections = 1 << 22

	DefaultFlushInterval = 50 * time.Millisecond
)

const intSize = 32 << (^uint(0) >> 63)

// MinRingBufferSize is the smallest ring buffer: one page.
var MinRingBufferSize = os.Getpagesize()

// DefaultWakeupBytes is the wakeup threshold for a ring of ringSize
// bytes: a sixteenth of it.
func DefaultWakeupBytes(ringSize int) int { return ringSize / 16 }

// CheckRingBufferSize says whether the kernel takes a ring buffer of n
// bytes: a power of two, at least a page, and within the map's u32
// max_entries. Its error reads "want ...".
func CheckRingBufferSize(n int) error {
	if n < MinRingBufferSize || n > MaxRingBufferSize || n&(n-1) != 0 {
		return fmt.Errorf("want a power of two from %d to %d", MinRingBufferSize, MaxRingBufferSize)
	}
	return nil
}

// Validate checks the options as Open would, without loading anything.
func (o Options) Validate() error { return o.setDefaults() }

func (o *Options) setDefaults() error {
	if o.Attach == "" {
		o.Attach = AttachAuto
	}
	if _, err := ParseAttach(string(o.Attach)); err != nil {
		return err
	}
	if o.RingBufferSize == 0 {
		o.RingBufferSize = DefaultRingBufferSize
	}
	if err := CheckRingBufferSize(o.RingBufferSize); err != nil {
		return fmt.Errorf("ring buffer size %d: %w", o.RingBufferSize, err)
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = DefaultMaxConnections
	}
	if o.MaxConnections < 0 || o.MaxConnections > MaxMaxConnections {
		return fmt.Errorf("max connections %d: want 1 to %d", o.MaxConnections, MaxMaxConnections)
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.FlushInterval < 0 {
		return errors.New("flush interval " + o.FlushInterval.String() + ": must be positive")
	}
	if o.WakeupBytes == 0 {
		o.WakeupBytes = DefaultWakeupBytes(o.RingBufferSize)
	}
	if o.WakeupBytes < 0 || o.WakeupBytes > o.RingBufferSize {
		return fmt.Errorf("wakeup bytes %d: want 1 to the ring's size, %d", o.WakeupBytes, o.RingBufferSize)
	}
	return nil
}
