package policy

import (
	"bytes"
	"context"
	"time"
)

// WatchOptions configures Watch.
type WatchOptions struct {
	// Read returns the file's current bytes. The caller owns where they come
	// from (a path, a ConfigMap mount); this package never opens files.
	Read func() ([]byte, error)
	// Interval between checks; polling the content (rather than relying on
	// inotify) also sees Kubernetes ConfigMap updates, which swap a symlink.
	Interval time.Duration
	// Settle is how long changed content must stay the same before it is
	// parsed: it is read again after Settle and applied only if both reads
	// agree, so a file caught while it is being written is never applied.
	// Zero means a quarter of Interval (at most 250ms).
	Settle time.Duration
	// Initial is the content the running Config was parsed from.
	Initial []byte
	// Apply is called with each new valid Config.
	Apply func(*Config)
	// Rejected is called when changed content does not parse or read; the last
	// good Config stays in force.
	Rejected func(error)
}

// Watch polls until ctx is done, applying every change that parses (and
// reads the same twice, Settle apart) and reporting every change that does
// not. The same failure is reported once,
// not on every poll.
func Watch(ctx context.Context, o WatchOptions) {
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.Settle <= 0 {
		o.Settle = min(o.Interval/4, 250*time.Millisecond)
	}
	last := o.Initial
	var lastErr string
	reject := func(err error) {
		if o.Rejected != nil && err.Error() != lastErr {
			o.Rejected(err)
		}
		lastErr = err.Error()
	}
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		data, err := o.Read()
		if err != nil {
			reject(err)
			continue
		}
		if bytes.Equal(data, last) {
			continue
		}
		// Changed: read again once it had time to settle.
		select {
		case <-ctx.Done():
			return
		case <-time.After(o.Settle):
		}
		again, err := o.Read()
		if err != nil {
			reject(err)
			continue
		}
		if !bytes.Equal(again, data) {
			continue // still being written; looked at again next interval
		}
		last = data
		c, err := Parse(data)
		if err != nil {
			reject(err)
			continue
		}
		lastErr = ""
		if o.Apply != nil {
			o.Apply(c)
		}
	}
}
