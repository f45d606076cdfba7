package gate

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// providerAnswer ends an admitted exchange with the provider's status and
// headers.
func providerAnswer(x *Exchange, status string, extra ...Header) {
	x.ResponseHeaders(append(HeaderList{{":status", status}, {"content-type", "application/json"}}, extra...), false)
	x.Settle()
}

func TestUpstreamCooldown(t *testing.T) {
	anth := func(key string) HeaderList {
		return post(pathMessages, tenantHeader("acme"), Header{":authority", "api.anthropic.com"}, Header{"x-api-key", key})
	}
	cases := []struct {
		name     string
		status   string
		headers  []Header
		wait     time.Duration // the cool-down the answer starts; 0: none
		sameKey  bool          // the next request uses the same key
		afterGap time.Duration // how long after the answer the next request comes
	}{
		{"429 with retry-after", "429", []Header{{"retry-after", "20"}}, 20 * time.Second, true, 0},
		{"529 with retry-after-ms", "529", []Header{{"retry-after-ms", "1500"}}, 1500 * time.Millisecond, true, 0},
		{"429 without retry-after, an exhausted window", "429", []Header{
			{"anthropic-ratelimit-requests-limit", "60"}, {"anthropic-ratelimit-requests-remaining", "0"},
			{"anthropic-ratelimit-requests-reset", t0.Add(7 * time.Second).Format(time.RFC3339)}}, 7 * time.Second, true, 0},
		{"429 with nothing to go on", "429", nil, 0, true, 0},
		{"500 with retry-after is no cool-down", "500", []Header{{"retry-after", "20"}}, 0, true, 0},
		{"another key is another upstream", "429", []Header{{"retry-after", "20"}}, 0, false, 0},
		{"the cool-down ends", "429", []Header{{"retry-after", "20"}}, 0, true, 20 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, baseYAML)
			x, _ := h.admit(anth("sk-ant-one"), sonnetBody)
			providerAnswer(x, c.status, c.headers...)
			h.clock.Advance(c.afterGap)
			key := "sk-ant-one"
			if !c.sameKey {
				key = "sk-ant-two"
			}
			if c.wait == 0 {
				x, _ := h.admit(anth(key), sonnetBody)
				providerAnswer(x, "200")
				return
			}
			_, r := h.refuse(anth(key), sonnetBody)
			if r.Status != 429 {
				t.Fatalf("status %d", r.Status)
			}
			want := map[string]string{
				"retry-after-ms": strconv.FormatInt(c.wait.Milliseconds(), 10),
				"retry-after":    strconv.FormatInt(int64((c.wait+time.Second-1)/time.Second), 10),
				"x-should-retry": "true", contract.DeniedHeader: DeniedUpstreamCooldown,
			}
			for name, v := range want {
				if got, _ := header(r.Headers, name); got != v {
					t.Errorf("%s = %q, want %q", name, got, v)
				}
			}
			if !strings.Contains(string(r.Body), `"rate_limit_error"`) {
				t.Errorf("body %s", r.Body)
			}
			if o := h.obs.lastOutcome(t); o.Decision != "denied_upstream_cooldown" || o.Result != ResultDenied {
				t.Errorf("outcome %+v", o)
			}
			// Nothing was reserved for the refused request: the store saw one
			// admission, the first request's.
			if n := h.obs.calls("admit"); n != 1 {
				t.Errorf("%d admissions, want 1", n)
			}
		})
	}
}

// TestUpstreamIdentity: the upstream is the host with the credential's
// fingerprint, else the route; ports and case do not matter, and an
// unknown host is "other" for metrics.
func TestUpstreamIdentity(t *testing.T) {
	cases := []struct {
		headers HeaderList
		route   string
		id      string
		host    string
	}{
		{HeaderList{{":authority", "api.anthropic.com"}, {"x-api-key", "sk-1"}}, "", "api.anthropic.com#" + policy.Fingerprint("sk-1"), "api.anthropic.com"},
		{HeaderList{{":authority", "API.OpenAI.com:443"}, {"authorization", "Bearer sk-1"}}, "", "api.openai.com#" + policy.Fingerprint("sk-1"), "api.openai.com"},
		{HeaderList{{":authority", "llm.internal:8080"}}, "batch", "llm.internal@batch", "other"},
		{HeaderList{{":authority", "[::1]"}, {"x-api-key", " "}}, "", "[::1]@", "other"},
	}
	for _, c := range cases {
		var x Exchange
		x.upstreamRequest(c.headers, c.route)
		if x.up.id != c.id || x.up.host != c.host {
			t.Errorf("%v: id %q host %q, want %q %q", c.headers, x.up.id, x.up.host, c.id, c.host)
		}
		if strings.Contains(x.up.id, "sk-1") {
			t.Errorf("the credential itself is in the id %q", x.up.id)
		}
	}
}
