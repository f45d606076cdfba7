package mockprovider

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

// TestServiceTierKnob: x-mock-service-tier sets the tier every dialect's
// response reports, where that dialect reports it, and the ledger records
// it; without the knob each reports its usual value.
func TestServiceTierKnob(t *testing.T) {
	s := startMock(t, Options{})
	gem := `{"contents":[{"role":"user","parts":[{"text":"Hello"}]}]}`
	for _, tc := range []struct {
		name, path, body string
		h                func() http.Header
		tier             string // the knob; "" for none
		want             []string
	}{
		{"chat json", "/v1/chat/completions", oaiHello, openaiHeaders, "flex", []string{"service_tier"}},
		{"chat json default", "/v1/chat/completions", oaiHello, openaiHeaders, "", []string{"service_tier"}},
		{"responses json", "/v1/responses", `{"model":"gpt-5.6-terra","input":"Hello"}`, openaiHeaders, "priority", []string{"service_tier"}},
		{"anthropic json", "/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":50,"messages":[{"role":"user","content":"Hello"}]}`, anthropicHeaders, "batch", []string{"usage.service_tier"}},
		{"gemini json", "/v1beta/models/gemini-2.5-flash:generateContent", gem, geminiHeaders, "ON_DEMAND_FLEX", []string{"usageMetadata.trafficType"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.h()
			if tc.tier != "" {
				h = with(h, "x-mock-service-tier", tc.tier)
			}
			n := len(s.Provider().Ledger())
			resp, body, err := post(t, s.URL()+tc.path, tc.body, h)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("%d %v %s", resp.StatusCode, err, body)
			}
			want := tc.tier
			if want == "" {
				want = "default"
			}
			for _, path := range tc.want {
				if got := gjson.GetBytes(body, path).String(); got != want {
					t.Errorf("%s = %q, want %q", path, got, want)
				}
			}
			if l := s.Provider().Ledger()[n:]; len(l) != 1 || l[0].ServiceTier != want {
				t.Errorf("ledger %+v", l)
			}
		})
	}

	// A Chat stream carries the tier on every chunk.
	resp, body, err := post(t, s.URL()+"/v1/chat/completions", oaiStream, with(openaiHeaders(), "x-mock-service-tier", "priority"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %v", resp.StatusCode, err)
	}
	evs, err := decodeSSE(body)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if ev.Data != "[DONE]" && gjson.Get(ev.Data, "service_tier").String() != "priority" {
			t.Errorf("chunk without the tier: %s", ev.Data)
		}
	}
	// An Anthropic stream: message_start's usage.
	resp, body, _ = post(t, s.URL()+"/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"Hello"}]}`,
		with(anthropicHeaders(), "x-mock-service-tier", "priority"))
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"service_tier":"priority"`) {
		t.Errorf("anthropic stream: %d %s", resp.StatusCode, body)
	}
	// A malformed knob is refused, not ignored.
	if resp, _, _ := post(t, s.URL()+"/v1/chat/completions", oaiHello, with(openaiHeaders(), "x-mock-service-tier", `fl"ex`)); resp.StatusCode != 400 {
		t.Errorf("bad knob: %d", resp.StatusCode)
	}
}

// TestExplicitBreakpoints: on gpt-5.6, a prefix up to the latest explicit
// breakpoint is written on first sight and read on a repeat, to the token
// rule's count; markers do not change the prompt; older models ignore
// them; malformed markers and options are refused.
func TestExplicitBreakpoints(t *testing.T) {
	s := startMock(t, Options{})
	system := strings.Repeat("You are terse. ", 100) // 1500 bytes: 375 tokens
	mark := `,"prompt_cache_breakpoint":{"mode":"explicit"}`
	chat := func(model, m1, m2, question string) string {
		return `{"model":"` + model + `","messages":[{"role":"system","content":[{"type":"text","text":"` + system + `"` + m1 + `}]},` +
			`{"role":"user","content":[{"type":"text","text":"` + question + `"` + m2 + `}]}]}`
	}
	usage := func(body string) (prompt, cached, written int64, bps int) {
		t.Helper()
		n := len(s.Provider().Ledger())
		resp, b, err := post(t, s.URL()+"/v1/chat/completions", body, openaiHeaders())
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%d %v %s", resp.StatusCode, err, b)
		}
		u := gjson.GetBytes(b, "usage")
		l := s.Provider().Ledger()[n]
		if l.Reported.CacheWrite5mTokens != u.Get("prompt_tokens_details.cache_write_tokens").Int() ||
			l.Reported.InputTokens != u.Get("prompt_tokens").Int()-l.Reported.CacheReadTokens-l.Reported.CacheWrite5mTokens {
			t.Errorf("ledger %+v for %s", l.Reported, u.Raw)
		}
		return u.Get("prompt_tokens").Int(), u.Get("prompt_tokens_details.cached_tokens").Int(), u.Get("prompt_tokens_details.cache_write_tokens").Int(), l.Breakpoints
	}
	const sysTokens = 3 + 375
	if _, c, w, n := usage(chat("gpt-5.6-terra", mark, "", "Hi")); c != 0 || w != sysTokens || n != 1 {
		t.Errorf("first sight: cached %d written %d breakpoints %d, want 0 %d 1", c, w, n, sysTokens)
	}
	if _, c, w, _ := usage(chat("gpt-5.6-terra", mark, "", "Another question")); c != sysTokens || w != 0 {
		t.Errorf("repeat: cached %d written %d, want %d 0", c, w, sysTokens)
	}
	// A later breakpoint: read up to the warm one, write the rest.
	q := strings.Repeat("abcd", 20) // 20 tokens
	if _, c, w, n := usage(chat("gpt-5.6-terra", mark, mark, q)); c != sysTokens || w != 3+20 || n != 2 {
		t.Errorf("second breakpoint: cached %d written %d breakpoints %d", c, w, n)
	}
	// The markers are not part of the prompt: without the system one, the
	// turn's prefix is still warm.
	if _, c, w, _ := usage(chat("gpt-5.6-terra", "", mark, q)); c != sysTokens+3+20 || w != 0 {
		t.Errorf("moved markers: cached %d written %d", c, w)
	}
	// Models before gpt-5.6 take no explicit breakpoints: nothing written.
	if _, c, w, n := usage(chat("gpt-4o", mark, "", "Hi")); c != 0 || w != 0 || n != 0 {
		t.Errorf("gpt-4o: cached %d written %d breakpoints %d", c, w, n)
	}
	for name, body := range map[string]string{
		"a marker on a refusal part": `{"model":"gpt-5.6-luna","messages":[{"role":"assistant","content":[{"type":"refusal","refusal":"no"` + mark + `}]}]}`,
		"a marker of another mode":   `{"model":"gpt-5.6-luna","messages":[{"role":"user","content":[{"type":"text","text":"a","prompt_cache_breakpoint":{"mode":"auto"}}]}]}`,
		"an unknown mode":            `{"model":"gpt-5.6-luna","prompt_cache_options":{"mode":"always"},"messages":[{"role":"user","content":"a"}]}`,
		"a ttl other than 30m":       `{"model":"gpt-5.6-luna","prompt_cache_options":{"ttl":"1h"},"messages":[{"role":"user","content":"a"}]}`,
	} {
		if resp, b, _ := post(t, s.URL()+"/v1/chat/completions", body, openaiHeaders()); resp.StatusCode != 400 {
			t.Errorf("%s: %d %s", name, resp.StatusCode, b)
		}
	}

	// Responses: the instructions lead the prefix.
	resp := func(question string) (cached, written int64) {
		t.Helper()
		body := `{"model":"gpt-5.6-sol","instructions":"` + system + `","input":[{"role":"user","content":[{"type":"input_text","text":"` + question + `"` + mark + `}]}]}`
		r, b, err := post(t, s.URL()+"/v1/responses", body, openaiHeaders())
		if err != nil || r.StatusCode != 200 {
			t.Fatalf("%d %v %s", r.StatusCode, err, b)
		}
		d := gjson.GetBytes(b, "usage.input_tokens_details")
		return d.Get("cached_tokens").Int(), d.Get("cache_write_tokens").Int()
	}
	if c, w := resp(q); c != 0 || w != sysTokens+3+20 {
		t.Errorf("responses first: cached %d written %d", c, w)
	}
	if c, w := resp(q); c != sysTokens+3+20 || w != 0 {
		t.Errorf("responses repeat: cached %d written %d", c, w)
	}
}

// TestExplicitBreakpointsCounted: implicit mode writes the latest 3
// breakpoints, explicit mode the latest 4.
func TestExplicitBreakpointsCounted(t *testing.T) {
	c := newPromptCache(100)
	bps := []oaiBreakpoint{{key: [32]byte{1}, tokens: 10}, {key: [32]byte{2}, tokens: 20}, {key: [32]byte{3}, tokens: 30}, {key: [32]byte{4}, tokens: 40}}
	now := time.Now()
	_, w, plan := c.planExplicit(bps, 3, now)
	if w != 40 || len(plan.writes) != 3 {
		t.Fatalf("implicit: written %d, %d writes", w, len(plan.writes))
	}
	c.commit(plan, now)
	// The earliest was not written: only the three later ones are warm.
	if r, w, _ := c.planExplicit(bps[:1], 4, now); r != 0 || w != 10 {
		t.Errorf("the uncounted breakpoint: read %d written %d", r, w)
	}
	if r, _, _ := c.planExplicit(bps[:2], 4, now); r != 20 {
		t.Errorf("a counted breakpoint: read %d", r)
	}
}

func geminiHeaders() http.Header {
	return http.Header{"Content-Type": {"application/json"}, "X-Goog-Api-Key": {"k"}}
}
