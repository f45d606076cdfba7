package gate

import (
	"sync/atomic"
	"time"
)

// sampler lets one log line through per second and counts the rest, so an
// outage that refuses every request logs a line a second with how many it
// stood for, not one per request (the counters have them all).
type sampler struct {
	last       atomic.Int64 // unix nanoseconds of the last line let through
	suppressed atomic.Int64
}

func (s *sampler) allow(now time.Time) (suppressed int64, ok bool) {
	last := s.last.Load()
	if now.UnixNano()-last < int64(time.Second) || !s.last.CompareAndSwap(last, now.UnixNano()) {
		s.suppressed.Add(1)
		return 0, false
	}
	return s.suppressed.Swap(0), true
}
