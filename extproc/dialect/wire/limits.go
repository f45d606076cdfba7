package wire

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// LimitWindow is one of a provider's own rate limits as its response
// headers describe it: the limit, what is left of it, and when it is full
// again. Known is false when the response did not carry it.
type LimitWindow struct {
	Limit     int64
	Remaining int64
	Reset     time.Time
	Known     bool
}

// Fraction is Remaining/Limit, 1 when unknown or unlimited.
func (w LimitWindow) Fraction() float64 {
	if !w.Known || w.Limit <= 0 {
		return 1
	}
	return float64(max(w.Remaining, 0)) / float64(w.Limit)
}

// ProviderLimits is what one provider response says about the provider's
// limits on the credential that sent it. The zero value says nothing.
type ProviderLimits struct {
	Requests     LimitWindow
	Tokens       LimitWindow // input and output together, where the provider reports it
	InputTokens  LimitWindow
	OutputTokens LimitWindow
	// RetryAfter is the provider's own wait (retry-after-ms, else
	// retry-after in seconds or as an HTTP date); zero when it named none.
	RetryAfter time.Duration
}

// Any reports whether the response carried any limit at all.
func (l ProviderLimits) Any() bool {
	return l.Requests.Known || l.Tokens.Known || l.InputTokens.Known || l.OutputTokens.Known
}

// Lowest is the window with the smallest remaining fraction, and its name
// (requests, tokens, input_tokens, output_tokens); ok is false when no
// window is known.
func (l ProviderLimits) Lowest() (name string, w LimitWindow, ok bool) {
	best := math.Inf(1)
	for _, c := range [...]struct {
		n string
		w LimitWindow
	}{{"requests", l.Requests}, {"tokens", l.Tokens}, {"input_tokens", l.InputTokens}, {"output_tokens", l.OutputTokens}} {
		if c.w.Known && c.w.Limit > 0 && c.w.Fraction() < best {
			best, name, w, ok = c.w.Fraction(), c.n, c.w, true
		}
	}
	return name, w, ok
}

// HeaderGetter reads one response header by its lower-case name.
type HeaderGetter func(name string) (string, bool)

// maxLimit bounds a parsed limit or remaining count: beyond it a value is
// not a rate limit but noise, and arithmetic on it must not overflow.
const maxLimit = 1 << 50

// maxReset bounds how far ahead a reset or retry may lie; a provider's
// minute and day windows are well inside it, and a value past it is not
// believed.
const maxReset = 48 * time.Hour

// ParseCount reads a non-negative decimal count; ok is false for anything
// else (signs, fractions, spaces inside, overflow past maxLimit).
func ParseCount(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 16 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if n > maxLimit {
		return 0, false
	}
	return n, true
}

// RetryAfter reads the provider's wait: retry-after-ms (OpenAI's and
// Anthropic's SDKs read it first), else retry-after as delta-seconds or an
// HTTP date (RFC 9110 §10.2.3). Zero when neither is there or believable.
func RetryAfter(get HeaderGetter, now time.Time) time.Duration {
	if v, ok := get("retry-after-ms"); ok {
		if ms, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && ms > 0 && ms <= float64(maxReset.Milliseconds()) {
			return time.Duration(ms * float64(time.Millisecond))
		}
	}
	v, ok := get("retry-after")
	if !ok {
		return 0
	}
	v = strings.TrimSpace(v)
	if s, ok := ParseCount(v); ok {
		if d := time.Duration(s) * time.Second; s > 0 && d <= maxReset {
			return d
		}
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		// Not RFC 9110, but some proxies send fractions: honoured.
		if s > 0 && s <= maxReset.Seconds() {
			return time.Duration(s * float64(time.Second))
		}
		return 0
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 && d <= maxReset {
			return d
		}
	}
	return 0
}

// Window builds a LimitWindow from its three header values, reset already
// read as an instant; a window without a valid limit and remaining is
// unknown, and a reset outside (now, now+48h] is dropped to now.
func Window(limit, remaining string, reset time.Time, now time.Time) LimitWindow {
	l, ok1 := ParseCount(limit)
	r, ok2 := ParseCount(remaining)
	if !ok1 || !ok2 {
		return LimitWindow{}
	}
	if reset.Before(now) || reset.Sub(now) > maxReset {
		reset = now
	}
	return LimitWindow{Limit: l, Remaining: min(r, l), Reset: reset, Known: true}
}

// HeaderMap is a HeaderGetter over a map, for tests and simple callers.
func HeaderMap(m map[string]string) HeaderGetter {
	return func(name string) (string, bool) { v, ok := m[name]; return v, ok }
}

// LimitHeaders are the names of one window's three rate-limit headers,
// spelled out once per dialect rather than concatenated on every response.
type LimitHeaders struct{ Limit, Remaining, Reset string }
