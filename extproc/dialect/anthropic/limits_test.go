package anthropic

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

func TestLimits(t *testing.T) {
	now := time.Date(2025, 10, 30, 16, 17, 34, 0, time.UTC)
	full := map[string]string{
		"anthropic-ratelimit-requests-limit": "4000", "anthropic-ratelimit-requests-remaining": "3997",
		"anthropic-ratelimit-requests-reset":     "2025-10-30T16:17:35Z",
		"anthropic-ratelimit-tokens-limit":       "280000",
		"anthropic-ratelimit-tokens-remaining":   "279000",
		"anthropic-ratelimit-tokens-reset":       "2025-10-30T16:17:36Z",
		"anthropic-ratelimit-input-tokens-limit": "200000", "anthropic-ratelimit-input-tokens-remaining": "199000",
		"anthropic-ratelimit-input-tokens-reset":  "2025-10-30T16:17:36Z",
		"anthropic-ratelimit-output-tokens-limit": "80000", "anthropic-ratelimit-output-tokens-remaining": "0",
		"anthropic-ratelimit-output-tokens-reset": "2025-10-30T16:18:34Z",
		"retry-after": "20",
	}
	at := func(s string) time.Time { t, _ := time.Parse(time.RFC3339, s); return t }
	cases := []struct {
		name    string
		h       map[string]string
		req     wire.LimitWindow
		out     wire.LimitWindow
		retry   time.Duration
		lowest  string
		anyKnow bool
	}{
		{"all four and a retry", full,
			wire.LimitWindow{Limit: 4000, Remaining: 3997, Reset: at("2025-10-30T16:17:35Z"), Known: true},
			wire.LimitWindow{Limit: 80000, Remaining: 0, Reset: at("2025-10-30T16:18:34Z"), Known: true},
			20 * time.Second, "output_tokens", true},
		{"none", map[string]string{}, wire.LimitWindow{}, wire.LimitWindow{}, 0, "", false},
		{"limit without remaining is unknown", map[string]string{"anthropic-ratelimit-requests-limit": "50"},
			wire.LimitWindow{}, wire.LimitWindow{}, 0, "", false},
		{"bad reset is now", map[string]string{"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "7",
			"anthropic-ratelimit-requests-reset": "tomorrow"},
			wire.LimitWindow{Limit: 50, Remaining: 7, Reset: now, Known: true}, wire.LimitWindow{}, 0, "requests", true},
		{"reset in the past is now", map[string]string{"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "7",
			"anthropic-ratelimit-requests-reset": "2020-01-01T00:00:00Z"},
			wire.LimitWindow{Limit: 50, Remaining: 7, Reset: now, Known: true}, wire.LimitWindow{}, 0, "requests", true},
		{"remaining above limit is clamped", map[string]string{"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "70"},
			wire.LimitWindow{Limit: 50, Remaining: 50, Reset: now, Known: true}, wire.LimitWindow{}, 0, "requests", true},
		{"negative remaining is not a count", map[string]string{"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "-1"},
			wire.LimitWindow{}, wire.LimitWindow{}, 0, "", false},
		{"retry-after-ms wins", map[string]string{"retry-after": "20", "retry-after-ms": "1500"},
			wire.LimitWindow{}, wire.LimitWindow{}, 1500 * time.Millisecond, "", false},
		{"retry-after as a date", map[string]string{"retry-after": now.Add(90 * time.Second).Format(http.TimeFormat)},
			wire.LimitWindow{}, wire.LimitWindow{}, 90 * time.Second, "", false},
		{"retry-after absurd", map[string]string{"retry-after": "99999999"},
			wire.LimitWindow{}, wire.LimitWindow{}, 0, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := Messages{}.ProviderLimits(wire.HeaderMap(c.h), now)
			if !l.Requests.Reset.Equal(c.req.Reset) || l.Requests.Limit != c.req.Limit || l.Requests.Remaining != c.req.Remaining || l.Requests.Known != c.req.Known {
				t.Errorf("requests %+v, want %+v", l.Requests, c.req)
			}
			if !l.OutputTokens.Reset.Equal(c.out.Reset) || l.OutputTokens.Limit != c.out.Limit || l.OutputTokens.Remaining != c.out.Remaining || l.OutputTokens.Known != c.out.Known {
				t.Errorf("output tokens %+v, want %+v", l.OutputTokens, c.out)
			}
			if l.RetryAfter != c.retry {
				t.Errorf("retry %s, want %s", l.RetryAfter, c.retry)
			}
			if name, _, _ := l.Lowest(); name != c.lowest {
				t.Errorf("lowest %q, want %q", name, c.lowest)
			}
			if l.Any() != c.anyKnow {
				t.Errorf("Any %v", l.Any())
			}
		})
	}
}

// TestLimitsFromRecordings reads every recorded response's headers: each
// carries all four windows, and each parses with its remaining at most its
// limit and its reset no earlier than the response.
func TestLimitsFromRecordings(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(recordedDir(t), "cassettes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no cassettes: %v", err)
	}
	n := 0
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var c struct {
			Interactions []struct {
				Response struct {
					Headers map[string][]string `json:"headers"`
				} `json:"response"`
			} `json:"interactions"`
		}
		if err := yaml.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		for _, in := range c.Interactions {
			h := http.Header(in.Response.Headers)
			date, err := http.ParseTime(h.Get("Date"))
			if err != nil || h.Get("Anthropic-Ratelimit-Requests-Limit") == "" {
				continue
			}
			n++
			l := Limits(func(name string) (string, bool) { v := h.Values(name); return h.Get(name), len(v) > 0 }, date)
			for name, w := range map[string]wire.LimitWindow{"requests": l.Requests, "tokens": l.Tokens, "input": l.InputTokens, "output": l.OutputTokens} {
				if !w.Known || w.Limit <= 0 || w.Remaining > w.Limit || w.Reset.Before(date) {
					t.Errorf("%s: %s window %+v (response at %s)", filepath.Base(f), name, w, date)
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no recorded response carries rate-limit headers")
	}
}

func FuzzLimits(f *testing.F) {
	f.Add("4000", "3997", "2025-10-30T16:17:35Z", "20", "")
	f.Add("0", "0", "", "Wed, 21 Oct 2015 07:28:00 GMT", "1.5")
	f.Add("99999999999999999999", "-1", "x", "-3", "NaN")
	f.Fuzz(func(t *testing.T, limit, left, reset, retry, retryMS string) {
		now := time.Date(2025, 10, 30, 16, 17, 34, 0, time.UTC)
		h := map[string]string{"retry-after": retry, "retry-after-ms": retryMS}
		for _, d := range []string{"requests", "tokens", "input-tokens", "output-tokens"} {
			h["anthropic-ratelimit-"+d+"-limit"] = limit
			h["anthropic-ratelimit-"+d+"-remaining"] = left
			h["anthropic-ratelimit-"+d+"-reset"] = reset
		}
		l := Limits(wire.HeaderMap(h), now)
		for _, w := range []wire.LimitWindow{l.Requests, l.Tokens, l.InputTokens, l.OutputTokens} {
			if w.Known && (w.Remaining < 0 || w.Remaining > w.Limit || w.Reset.Before(now) || w.Reset.Sub(now) > 48*time.Hour) {
				t.Fatalf("window %+v", w)
			}
			if f := w.Fraction(); f < 0 || f > 1 {
				t.Fatalf("fraction %v", f)
			}
		}
		if l.RetryAfter < 0 || l.RetryAfter > 48*time.Hour {
			t.Fatalf("retry %s", l.RetryAfter)
		}
	})
}
