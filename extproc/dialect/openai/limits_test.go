package openai

import (
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

func TestLimits(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	cases := []struct {
		name     string
		h        map[string]string
		req, tok wire.LimitWindow
		retry    time.Duration
	}{
		{"both windows", map[string]string{
			"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "1s",
			"x-ratelimit-limit-tokens": "150000", "x-ratelimit-remaining-tokens": "149984", "x-ratelimit-reset-tokens": "6m0s",
		},
			wire.LimitWindow{Limit: 60, Remaining: 59, Reset: now.Add(time.Second), Known: true},
			wire.LimitWindow{Limit: 150000, Remaining: 149984, Reset: now.Add(6 * time.Minute), Known: true}, 0},
		{"milliseconds and fractions", map[string]string{
			"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms",
			"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "7.66s",
			"retry-after": "1",
		},
			wire.LimitWindow{Limit: 60, Remaining: 0, Reset: now.Add(20 * time.Millisecond), Known: true},
			wire.LimitWindow{Limit: 1000, Remaining: 10, Reset: now.Add(7660 * time.Millisecond), Known: true}, time.Second},
		{"unparsable reset is now", map[string]string{
			"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "soon",
		},
			wire.LimitWindow{Limit: 60, Remaining: 3, Reset: now, Known: true}, wire.LimitWindow{}, 0},
		{"negative reset is now", map[string]string{
			"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "-5s",
		},
			wire.LimitWindow{Limit: 60, Remaining: 3, Reset: now, Known: true}, wire.LimitWindow{}, 0},
		{"no headers", map[string]string{}, wire.LimitWindow{}, wire.LimitWindow{}, 0},
		{"fractional limit is not a count", map[string]string{"x-ratelimit-limit-tokens": "1.5", "x-ratelimit-remaining-tokens": "1"},
			wire.LimitWindow{}, wire.LimitWindow{}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := ChatCompletions{}.ProviderLimits(wire.HeaderMap(c.h), now)
			for _, p := range []struct {
				name      string
				got, want wire.LimitWindow
			}{{"requests", l.Requests, c.req}, {"tokens", l.Tokens, c.tok}} {
				if p.got.Known != p.want.Known || p.got.Limit != p.want.Limit || p.got.Remaining != p.want.Remaining || !p.got.Reset.Equal(p.want.Reset) {
					t.Errorf("%s %+v, want %+v", p.name, p.got, p.want)
				}
			}
			if l.RetryAfter != c.retry {
				t.Errorf("retry %s, want %s", l.RetryAfter, c.retry)
			}
			if l.InputTokens.Known || l.OutputTokens.Known {
				t.Error("OpenAI reports no separate input or output window")
			}
		})
	}
}

func FuzzLimits(f *testing.F) {
	f.Add("60", "59", "1s", "6m0s", "20")
	f.Add("0", "0", "20ms", "-1h", "")
	f.Add("9223372036854775807", "1", "2562047h47m16.854775807s", "1e9s", "1e308")
	f.Fuzz(func(t *testing.T, limit, left, reset, tokReset, retry string) {
		now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
		l := Limits(wire.HeaderMap(map[string]string{
			"x-ratelimit-limit-requests": limit, "x-ratelimit-remaining-requests": left, "x-ratelimit-reset-requests": reset,
			"x-ratelimit-limit-tokens": limit, "x-ratelimit-remaining-tokens": left, "x-ratelimit-reset-tokens": tokReset,
			"retry-after": retry,
		}), now)
		for _, w := range []wire.LimitWindow{l.Requests, l.Tokens} {
			if w.Known && (w.Remaining < 0 || w.Remaining > w.Limit || w.Reset.Before(now) || w.Reset.Sub(now) > 48*time.Hour) {
				t.Fatalf("window %+v", w)
			}
		}
		if l.RetryAfter < 0 || l.RetryAfter > 48*time.Hour {
			t.Fatalf("retry %s", l.RetryAfter)
		}
	})
}
