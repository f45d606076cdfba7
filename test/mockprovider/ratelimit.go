package mockprovider

import (
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// bucket is a continuously refilled token bucket: capacity limit, refilled at
// limit per window (a minute, as every limit Anthropic and OpenAI report),
// as Anthropic describes its own limiter: "capacity is continuously
// replenished up to your maximum limit"
// (https://docs.anthropic.com/en/api/rate-limits).
type bucket struct {
	limit  float64
	level  float64
	last   time.Time
	window time.Duration
}

func (b *bucket) refill(now time.Time) {
	if dt := now.Sub(b.last); dt > 0 {
		b.level = math.Min(b.limit, b.level+b.limit*float64(dt)/float64(b.window))
		b.last = now
	}
}

// untilAvailable is how long until n units are available.
func (b *bucket) untilAvailable(n float64) time.Duration {
	if b.level >= n {
		return 0
	}
	return time.Duration((n - b.level) / b.limit * float64(b.window))
}

// untilFull is how long until the bucket is back at its limit.
func (b *bucket) untilFull() time.Duration { return b.untilAvailable(b.limit) }

// limiter holds one dialect's request, input-token and output-token
// buckets, and with a combined limit (tpm > 0: OpenAI's tokens per minute,
// input and output together) its tokens bucket.
type limiter struct {
	mu                      sync.Mutex
	requests, input, output bucket
	tokens                  bucket
	combined                bool
}

func newLimiter(rpm, itpm, otpm, tpm int64, window time.Duration, now time.Time) *limiter {
	l := &limiter{combined: tpm > 0}
	l.requests = bucket{limit: float64(rpm), window: window}
	l.input = bucket{limit: float64(itpm), window: window}
	l.output = bucket{limit: float64(otpm), window: window}
	l.tokens = bucket{limit: float64(max(tpm, 1)), window: window}
	l.reset(now)
	return l
}

func (l *limiter) reset(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range []*bucket{&l.requests, &l.input, &l.output, &l.tokens} {
		b.level, b.last = b.limit, now
	}
}

// limitState is a snapshot for the response headers.
type limitState struct {
	now                         time.Time
	reqLimit, inLimit, outLimit int64
	reqLeft, inLeft, outLeft    int64
	reqReset, inReset, outReset time.Duration
	// The combined tokens bucket, when the limiter has one.
	combined          bool
	tokLimit, tokLeft int64
	tokReset          time.Duration
}

// take charges one request with in input and out output tokens. With enforce
// set it refuses (charging nothing) when a bucket cannot cover the request,
// returning how long until it could; a request larger than a bucket's whole
// capacity waits a full window, which is when it is as empty as it gets.
func (l *limiter) take(now time.Time, in, out int64, enforce bool) (limitState, time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	need := []struct {
		b *bucket
		n float64
	}{{&l.requests, 1}, {&l.input, float64(in)}, {&l.output, float64(out)}}
	if l.combined {
		need = append(need, struct {
			b *bucket
			n float64
		}{&l.tokens, float64(in + out)})
	}
	for _, x := range need {
		x.b.refill(now)
	}
	if enforce {
		var wait time.Duration
		for _, x := range need {
			if x.n > x.b.limit {
				wait = max(wait, x.b.window)
				continue
			}
			wait = max(wait, x.b.untilAvailable(x.n))
		}
		if wait > 0 {
			return l.stateLocked(now), wait, false
		}
	}
	for _, x := range need {
		// Without enforcement the level may go negative, as a provider's
		// adjusted estimate can; the headers clamp at zero.
		x.b.level -= x.n
	}
	return l.stateLocked(now), 0, true
}

// peek is the state without charging anything (error responses).
func (l *limiter) peek(now time.Time) limitState {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.requests.refill(now)
	l.input.refill(now)
	l.output.refill(now)
	l.tokens.refill(now)
	return l.stateLocked(now)
}

func (l *limiter) stateLocked(now time.Time) limitState {
	left := func(b *bucket) int64 { return int64(math.Max(0, math.Floor(b.level))) }
	return limitState{
		now:      now,
		reqLimit: int64(l.requests.limit), inLimit: int64(l.input.limit), outLimit: int64(l.output.limit),
		reqLeft: left(&l.requests), inLeft: left(&l.input), outLeft: left(&l.output),
		reqReset: l.requests.untilFull(), inReset: l.input.untilFull(), outReset: l.output.untilFull(),
		combined: l.combined, tokLimit: int64(l.tokens.limit), tokLeft: left(&l.tokens), tokReset: l.tokens.untilFull(),
	}
}

// setAnthropic writes the 12 anthropic-ratelimit-* headers: resets as RFC
// 3339 instants (whole seconds, rounded up), token remainders floored to
// thousands as in real recordings (200000 limit, 397 used → 199000).
func (s limitState) setAnthropic(h http.Header) {
	at := func(d time.Duration) string {
		t := s.now.Add(d).UTC()
		if t.Truncate(time.Second) != t { // never report a reset earlier than it happens
			t = t.Truncate(time.Second).Add(time.Second)
		}
		return t.Format(time.RFC3339)
	}
	thousands := func(n int64) string { return strconv.FormatInt(n/1000*1000, 10) }
	set := func(name string, limit int64, left string, reset string) {
		h.Set("anthropic-ratelimit-"+name+"-limit", strconv.FormatInt(limit, 10))
		h.Set("anthropic-ratelimit-"+name+"-remaining", left)
		h.Set("anthropic-ratelimit-"+name+"-reset", reset)
	}
	set("requests", s.reqLimit, strconv.FormatInt(s.reqLeft, 10), at(s.reqReset))
	// The tokens headers are "the most restrictive limit currently in
	// effect": the combined limit when there is one, else input and
	// output together.
	if s.combined {
		set("tokens", s.tokLimit, thousands(s.tokLeft), at(s.tokReset))
	} else {
		set("tokens", s.inLimit+s.outLimit, thousands(s.inLeft+s.outLeft), at(max(s.inReset, s.outReset)))
	}
	set("input-tokens", s.inLimit, thousands(s.inLeft), at(s.inReset))
	set("output-tokens", s.outLimit, thousands(s.outLeft), at(s.outReset))
}

// setOpenAI writes the six x-ratelimit-* headers with Go-duration resets
// ("120ms", "6m0s", "0s").
func (s limitState) setOpenAI(h http.Header) {
	dur := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	h.Set("x-ratelimit-limit-requests", strconv.FormatInt(s.reqLimit, 10))
	tokLimit, tokLeft, tokReset := s.inLimit+s.outLimit, s.inLeft+s.outLeft, max(s.inReset, s.outReset)
	if s.combined {
		tokLimit, tokLeft, tokReset = s.tokLimit, s.tokLeft, s.tokReset
	}
	h.Set("x-ratelimit-limit-tokens", strconv.FormatInt(tokLimit, 10))
	h.Set("x-ratelimit-remaining-requests", strconv.FormatInt(s.reqLeft, 10))
	h.Set("x-ratelimit-remaining-tokens", strconv.FormatInt(tokLeft, 10))
	h.Set("x-ratelimit-reset-requests", dur(s.reqReset))
	h.Set("x-ratelimit-reset-tokens", dur(tokReset))
}

// retryAfterSeconds renders a wait as the integer seconds of retry-after,
// rounded up and at least 1 so a client never retries straight into a 429.
func retryAfterSeconds(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(s, 1), 10)
}
