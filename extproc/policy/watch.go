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
	// Initial is the content the running Config was parsed from.
	Initial []byte
	// Apply is called with each new valid Config.
	Apply func(*Config)
	// Rejected is called when changed content does not parse or read; the last
	// good Config stays in force.
	Rejected func(error)
}

// Watch polls until ctx is done, applying every change that parses and
// reporting every change that does not. The same failure is reported once,
// not on every poll.
func Watch(ctx context.Context, o WatchOptions) {
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
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
