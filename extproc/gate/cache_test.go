package gate

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

const cacheYAML = `
policies:
  default:
    limits: {requests_per_minute: 1000, tokens_per_minute: 6000000}
    budgets: [{window: day, usd: 50}]
    response_cache: {enabled: true}
  counted:
    limits: {requests_per_minute: 2}
    response_cache: {enabled: true, count_requests: true}
  uncounted:
    limits: {requests_per_minute: 2}
    response_cache: {enabled: true}
  sharedp:
    response_cache: {enabled: true, shared: true}
  tiny:
    response_cache: {enabled: true, max_entry_bytes: 100}
  seeded:
    response_cache: {enabled: true, cacheable: [{any_temperature: true, seed: true}]}
  nocache: {}
tenants: {acme: {}, beta: {}}
`

// cacheRecorder adds the cache's observations to a recorder.
type cacheRecorder struct {
	*recorder
	mu      sync.Mutex
	lookups []string // result/reason
	fills   []string
	saved   []accounting.NanoUSD
	stored  []int64
}

func (c *cacheRecorder) CacheLookup(_, result, reason string) {
	c.mu.Lock()
	c.lookups = append(c.lookups, result+"/"+reason)
	c.mu.Unlock()
}

func (c *cacheRecorder) CacheHit(_, _ string, _ accounting.Usage, cost accounting.NanoUSD) {
	c.mu.Lock()
	c.saved = append(c.saved, cost)
	c.mu.Unlock()
}

func (c *cacheRecorder) CacheFill(result string) {
	c.mu.Lock()
	c.fills = append(c.fills, result)
	c.mu.Unlock()
}

func (c *cacheRecorder) CacheStored(_ string, b int64, _ int) {
	c.mu.Lock()
	c.stored = append(c.stored, b)
	c.mu.Unlock()
}

func (c *cacheRecorder) CacheCall(string, time.Duration, error) {}

func (c *cacheRecorder) lastFill() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.fills) == 0 {
		return ""
	}
	return c.fills[len(c.fills)-1]
}

type cacheHarness struct {
	*harness
	cache limiter.ResponseCache
	rec   *cacheRecorder
}

func newCacheHarness(t *testing.T, cache limiter.ResponseCache) *cacheHarness {
	h := newHarness(t, cacheYAML)
	if cache == nil {
		cache = limiter.NewMemoryCache(limiter.MemoryCacheOptions{Now: h.clock.Now})
	}
	rec := &cacheRecorder{recorder: h.obs}
	h.g.opts.ResponseCache = cache
	h.g.obs = rec
	return &cacheHarness{harness: h, cache: cache, rec: rec}
}

// begin runs Begin and Body under a route policy.
func (h *cacheHarness) begin(routePolicy string, hdrs HeaderList, body string) (*Exchange, BodyVerdict) {
	h.t.Helper()
	x, hv := h.g.Begin(context.Background(), Request{Headers: hdrs, RoutePolicy: routePolicy})
	if hv.PassThrough || hv.Reply != nil {
		h.t.Fatalf("Begin: %+v", hv)
	}
	return x, x.Body([]byte(body))
}

// answer gives x the provider's answer in chunks and settles it; it returns
// the response headers' edits.
func answer(x *Exchange, status, contentType, body string, extra ...Header) HeaderEdits {
	hs := append(HeaderList{{":status", status}, {"content-type", contentType}}, extra...)
	v := x.ResponseHeaders(hs, false)
	if !v.Done {
		parts := chunks(body, 37)
		for i, c := range parts {
			x.ResponseBody([]byte(c), i == len(parts)-1)
		}
	}
	x.Settle()
	return v.Edits
}

func setHeader(e HeaderEdits, name string) string {
	v, _ := header(e.Set, name)
	return v
}

const (
	detBody       = `{"model":"claude-sonnet-4-5","max_tokens":256,"temperature":0,"messages":[{"role":"user","content":"Hello, Claude"}]}`
	detStreamBody = `{"model":"claude-sonnet-4-5","max_tokens":256,"temperature":0,"stream":true,"messages":[{"role":"user","content":"Hello, Claude"}]}`
	detChatBody   = `{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"Hello!"}]}`
)

func TestCacheServesARepeatedJSONRequest(t *testing.T) {
	h := newCacheHarness(t, nil)
	hdrs := post(pathMessages, tenantHeader("acme"), Header{"anthropic-version", "2023-06-01"})
	x, bv := h.begin("", hdrs, detBody)
	if bv.Reply != nil {
		t.Fatalf("first request answered locally: %s", bv.Reply.Body)
	}
	e := answer(x, "200", "application/json", messageJSON, Header{"request-id", "req_provider"}, Header{"anthropic-ratelimit-requests-remaining", "10"})
	if got := setHeader(e, CacheHeader); got != CacheMiss {
		t.Errorf("first answer: %s=%q, want miss", CacheHeader, got)
	}
	if h.rec.lastFill() != FillStored {
		t.Fatalf("fill: %v", h.rec.fills)
	}
	before := h.budgets("acme", "default")

	h.clock.Advance(90 * time.Second)
	x2, bv := h.begin("", hdrs, detBody)
	r := bv.Reply
	if r == nil {
		t.Fatal("repeat was forwarded")
	}
	checkReplyFraming(t, r)
	if r.Status != 200 || string(r.Body) != messageJSON {
		t.Fatalf("hit: %d %s", r.Status, r.Body)
	}
	for name, want := range map[string]string{
		"content-type": "application/json", CacheHeader: CacheHit, "age": "90", "request-id": x2.requestID,
	} {
		if got, _ := header(r.Headers, name); got != want {
			t.Errorf("hit header %s = %q, want %q", name, got, want)
		}
	}
	if _, ok := header(r.Headers, "anthropic-ratelimit-requests-remaining"); ok {
		t.Error("the provider's rate-limit header was replayed")
	}
	o := x2.Outcome()
	if o.Result != ResultCacheHit || o.Metered {
		t.Errorf("hit outcome: %+v", o)
	}
	x2.Abort() // the stream ends
	after := h.budgets("acme", "default")
	if before["day"].Spent != after["day"].Spent || after["day"].Reserved != 0 {
		t.Errorf("a hit changed the budget: %+v -> %+v", before["day"], after["day"])
	}
	// Saved: the stored usage priced now.
	want := accounting.NanoUSD(25*sonnetIn + 200*sonnetWrite5m + 1000*sonnetRead + 150*sonnetOut)
	if len(h.rec.saved) != 1 || h.rec.saved[0] != want {
		t.Errorf("saved %v, want %d", h.rec.saved, want)
	}
}

func TestCacheReplaysAStreamEventByEvent(t *testing.T) {
	for _, tc := range []struct{ path, body, stream string }{
		{pathMessages, detStreamBody, sseStart + sseDelta + sseStop},
		{pathChat, `{"model":"gpt-4o-mini","temperature":0,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello!"}]}`, chatStart + chatUsage},
	} {
		t.Run(tc.path, func(t *testing.T) {
			h := newCacheHarness(t, nil)
			hdrs := post(tc.path, tenantHeader("acme"))
			x, bv := h.begin("", hdrs, tc.body)
			if bv.Reply != nil {
				t.Fatal(string(bv.Reply.Body))
			}
			answer(x, "200", "text/event-stream; charset=utf-8", tc.stream)
			if h.rec.lastFill() != FillStored {
				t.Fatalf("fills %v", h.rec.fills)
			}
			_, bv = h.begin("", hdrs, tc.body)
			if bv.Reply == nil || string(bv.Reply.Body) != tc.stream {
				t.Fatalf("hit: %+v", bv.Reply)
			}
			if ct, _ := header(bv.Reply.Headers, "content-type"); ct != "text/event-stream; charset=utf-8" {
				t.Errorf("content-type %q", ct)
			}
			// The JSON request is another key.
			_, bv = h.begin("", hdrs, strings.Replace(tc.body, `"stream":true,`, "", 1))
			if bv.Reply != nil {
				t.Error("a JSON request was served a stream")
			}
		})
	}
}

func TestCacheBypasses(t *testing.T) {
	for _, tc := range []struct {
		name, policy, path, body, reason string
		hdrs                             []Header
	}{
		{"temperature unset", "", pathMessages, sonnetBody, BypassSampling, nil},
		{"temperature 0.7", "", pathMessages, strings.Replace(detBody, `"temperature":0`, `"temperature":0.7`, 1), BypassSampling, nil},
		{"seed alone", "", pathChat, `{"model":"gpt-4o-mini","seed":7,"messages":[{"role":"user","content":"x"}]}`, BypassSampling, nil},
		{"n 2", "", pathChat, `{"model":"gpt-4o-mini","temperature":0,"n":2,"messages":[{"role":"user","content":"x"}]}`, BypassChoices, nil},
		{"server tool", "", pathMessages, `{"model":"claude-sonnet-4-5","max_tokens":256,"temperature":0,"tools":[{"type":"web_search_20250305","name":"web_search"}],"messages":[{"role":"user","content":"news?"}]}`, BypassServerTools, nil},
		{"mcp", "", pathMessages, `{"model":"claude-sonnet-4-5","max_tokens":256,"temperature":0,"mcp_servers":[{"type":"url","url":"https://x","name":"x"}],"messages":[{"role":"user","content":"x"}]}`, BypassServerTools, nil},
		{"warm-up", "", pathMessages, `{"model":"claude-sonnet-4-5","max_tokens":0,"temperature":0,"messages":[{"role":"user","content":"x"}]}`, BypassWarmup, nil},
		{"responses", "", "/v1/responses", `{"model":"gpt-4o-mini","temperature":0,"input":"x"}`, BypassDialect, nil},
		{"no-cache", "", pathMessages, detBody, BypassNoCache, []Header{{"cache-control", "No-Cache"}}},
		{"pragma", "", pathMessages, detBody, BypassNoCache, []Header{{"pragma", "no-cache"}}},
		{"no-store", "", pathMessages, detBody, BypassNoStore, []Header{{"cache-control", "max-age=0, no-store"}}},
		{"seed shape without seed", "seeded", pathChat, detChatBody, BypassSampling, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newCacheHarness(t, nil)
			x, bv := h.begin(tc.policy, post(tc.path, append([]Header{tenantHeader("acme")}, tc.hdrs...)...), tc.body)
			if bv.Reply != nil {
				t.Fatalf("answered locally: %s", bv.Reply.Body)
			}
			if got := h.rec.lookups; len(got) != 1 || got[0] != CacheBypass+"/"+tc.reason {
				t.Errorf("lookups %v, want bypass/%s", got, tc.reason)
			}
			e := x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/json"}}, false)
			if got := setHeader(e.Edits, CacheHeader); got != CacheBypass {
				t.Errorf("%s = %q", CacheHeader, got)
			}
		})
	}
	t.Run("a tool the client runs is cacheable", func(t *testing.T) {
		h := newCacheHarness(t, nil)
		h.begin("", post(pathMessages, tenantHeader("acme")), `{"model":"claude-sonnet-4-5","max_tokens":256,"temperature":0,"tools":[{"name":"get_weather","input_schema":{"type":"object"}}],"messages":[{"role":"user","content":"x"}]}`)
		if got := h.rec.lookups; len(got) != 1 || got[0] != CacheMiss+"/" {
			t.Errorf("lookups %v", got)
		}
	})
	t.Run("a seed shape with a seed", func(t *testing.T) {
		h := newCacheHarness(t, nil)
		h.begin("seeded", post(pathChat, tenantHeader("acme")), `{"model":"gpt-4o-mini","seed":3,"temperature":1,"messages":[{"role":"user","content":"x"}]}`)
		if got := h.rec.lookups; len(got) != 1 || got[0] != CacheMiss+"/" {
			t.Errorf("lookups %v", got)
		}
	})
	t.Run("a policy without the cache says bypass and looks nothing up", func(t *testing.T) {
		h := newCacheHarness(t, nil)
		x, _ := h.begin("nocache", post(pathMessages, tenantHeader("acme")), detBody)
		e := x.ResponseHeaders(HeaderList{{":status", "200"}, {"content-type", "application/json"}}, false)
		if got := setHeader(e.Edits, CacheHeader); got != CacheBypass || len(h.rec.lookups) != 0 {
			t.Errorf("%s=%q lookups %v", CacheHeader, got, h.rec.lookups)
		}
	})
}

// Client directives: no-cache fetches anew and refreshes the entry;
// no-store neither reads nor writes.
func TestCacheClientDirectives(t *testing.T) {
	h := newCacheHarness(t, nil)
	plain := post(pathMessages, tenantHeader("acme"))
	x, _ := h.begin("", post(pathMessages, tenantHeader("acme"), Header{"cache-control", "no-store"}), detBody)
	answer(x, "200", "application/json", messageJSON)
	if _, bv := h.begin("", plain, detBody); bv.Reply != nil {
		t.Fatal("a no-store answer was stored")
	}
	x, _ = h.begin("", post(pathMessages, tenantHeader("acme"), Header{"cache-control", "no-cache"}), detBody)
	answer(x, "200", "application/json", messageJSON)
	if h.rec.lastFill() != FillStored {
		t.Fatalf("no-cache answer not stored: %v", h.rec.fills)
	}
	if _, bv := h.begin("", plain, detBody); bv.Reply == nil {
		t.Fatal("the no-cache answer was not kept")
	}
}

func TestCacheStoresOnlyCompleteAnswers(t *testing.T) {
	truncated := strings.Replace(messageJSON, `"end_turn"`, `"max_tokens"`, 1)
	refused := strings.Replace(messageJSON, `"end_turn"`, `"refusal"`, 1)
	for _, tc := range []struct {
		name, body, status, ct, payload, want string
		cut                                   bool
		extra                                 []Header
		policy                                string
	}{
		{name: "error", body: detBody, status: "529", ct: "application/json", payload: `{"type":"error"}`, want: FillUpstreamError},
		{name: "truncated", body: detBody, status: "200", ct: "application/json", payload: truncated, want: FillTruncated},
		{name: "refusal", body: detBody, status: "200", ct: "application/json", payload: refused, want: FillRefused},
		{name: "no usage", body: detBody, status: "200", ct: "application/json", payload: `{"type":"message","stop_reason":"end_turn"}`, want: FillIncomplete},
		{name: "error event", body: detStreamBody, status: "200", ct: "text/event-stream", payload: sseStart + sseError, want: FillIncomplete},
		{name: "stream truncated", body: detStreamBody, status: "200", ct: "text/event-stream", payload: sseStart + strings.Replace(sseDelta, "end_turn", "max_tokens", 1) + sseStop, want: FillTruncated},
		{name: "stream without message_stop", body: detStreamBody, status: "200", ct: "text/event-stream", payload: sseStart + sseDelta, want: FillIncomplete},
		{name: "stream cancelled", body: detStreamBody, status: "200", ct: "text/event-stream", payload: sseStart + sseDelta, cut: true, want: FillIncomplete},
		{name: "chat length", body: detChatBody, status: "200", ct: "application/json", payload: strings.Replace(chatJSON, `"stop"`, `"length"`, 1), want: FillTruncated},
		{name: "chat content filter", body: detChatBody, status: "200", ct: "application/json", payload: strings.Replace(chatJSON, `"stop"`, `"content_filter"`, 1), want: FillRefused},
		{name: "gzip", body: detBody, status: "200", ct: "application/json", payload: messageJSON, extra: []Header{{"content-encoding", "gzip"}}, want: FillEncoded},
		{name: "too large", body: detBody, status: "200", ct: "application/json", payload: messageJSON, policy: "tiny", want: FillTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newCacheHarness(t, nil)
			path := pathMessages
			if strings.Contains(tc.body, "gpt-") {
				path = pathChat
			}
			hdrs := post(path, tenantHeader("acme"))
			x, bv := h.begin(tc.policy, hdrs, tc.body)
			if bv.Reply != nil {
				t.Fatal(string(bv.Reply.Body))
			}
			if tc.cut {
				x.ResponseHeaders(HeaderList{{":status", tc.status}, {"content-type", tc.ct}}, false)
				x.ResponseBody([]byte(tc.payload), false)
				x.Abort()
			} else {
				answer(x, tc.status, tc.ct, tc.payload, tc.extra...)
			}
			if got := h.rec.lastFill(); got != tc.want {
				t.Errorf("fill %q, want %q (all: %v)", got, tc.want, h.rec.fills)
			}
			if _, bv := h.begin(tc.policy, hdrs, tc.body); bv.Reply != nil {
				t.Errorf("served from the cache: %s", bv.Reply.Body)
			}
		})
	}
}

func TestCachePartitionsByOrg(t *testing.T) {
	h := newCacheHarness(t, nil)
	for _, pol := range []string{"", "sharedp"} {
		x, _ := h.begin(pol, post(pathMessages, tenantHeader("acme")), detBody)
		answer(x, "200", "application/json", messageJSON)
		_, bv := h.begin(pol, post(pathMessages, tenantHeader("beta")), detBody)
		if shared := pol != ""; (bv.Reply != nil) != shared {
			t.Errorf("policy %q: beta served acme's answer: %v", pol, bv.Reply != nil)
		}
		// Same org, another API key: the key is not part of the cache key.
		if _, bv := h.begin(pol, post(pathMessages, tenantHeader("acme"), Header{"x-api-key", "sk-other"}), detBody); bv.Reply == nil {
			t.Errorf("policy %q: acme's second key missed", pol)
		}
	}
	// What changes the answer changes the key.
	for _, hdrs := range []HeaderList{
		post(pathMessages, tenantHeader("acme"), Header{"anthropic-beta", "context-1m-2025-08-07"}),
		post(pathMessages+"?beta=true", tenantHeader("acme")),
		post(pathMessages, tenantHeader("acme"), Header{":authority", "other-upstream"}),
	} {
		if _, bv := h.begin("", hdrs, detBody); bv.Reply != nil {
			t.Errorf("%v: served the answer to another request", hdrs)
		}
	}
	if _, bv := h.begin("", post(pathMessages, tenantHeader("acme")), strings.Replace(detBody, "Hello", "Hullo", 1)); bv.Reply != nil {
		t.Error("another prompt was served")
	}
}

func TestCacheHitsCountRequestsOnlyWhenAsked(t *testing.T) {
	for _, tc := range []struct {
		policy   string
		deniedAt int // the request denied, 0 for none
	}{{"counted", 3}, {"uncounted", 0}} {
		t.Run(tc.policy, func(t *testing.T) {
			h := newCacheHarness(t, nil)
			hdrs := post(pathMessages, tenantHeader("acme"))
			x, _ := h.begin(tc.policy, hdrs, detBody)
			answer(x, "200", "application/json", messageJSON)
			for i := 2; i <= 4; i++ {
				x, bv := h.begin(tc.policy, hdrs, detBody)
				if bv.Reply == nil {
					t.Fatalf("request %d forwarded", i)
				}
				denied := bv.Reply.Status == 429
				if denied != (tc.deniedAt != 0 && i >= tc.deniedAt) {
					t.Errorf("request %d: status %d", i, bv.Reply.Status)
				}
				x.Abort()
			}
			if tc.policy == "counted" && h.obs.calls("settle") != 2 {
				// the miss and the one counted hit that was admitted
				t.Errorf("settles: %d", h.obs.calls("settle"))
			}
		})
	}
}

// failingCache is a cache that is down.
type failingCache struct{}

func (failingCache) Get(context.Context, string, string) ([]byte, bool, error) {
	return nil, false, limiter.ErrUnavailable
}

func (failingCache) Put(context.Context, string, string, []byte, time.Duration, int64, int64) (limiter.PutResult, error) {
	return limiter.PutResult{}, limiter.ErrUnavailable
}
func (failingCache) Close() error { return nil }

func TestCacheDownIsAMiss(t *testing.T) {
	h := newCacheHarness(t, failingCache{})
	x, bv := h.begin("", post(pathMessages, tenantHeader("acme")), detBody)
	if bv.Reply != nil {
		t.Fatalf("refused with the cache down: %s", bv.Reply.Body)
	}
	e := answer(x, "200", "application/json", messageJSON)
	if setHeader(e, CacheHeader) != CacheMiss || h.rec.lookups[0] != CacheError+"/" || h.rec.lastFill() != FillStoreError {
		t.Errorf("header %q lookups %v fills %v", setHeader(e, CacheHeader), h.rec.lookups, h.rec.fills)
	}
	if o := x.Outcome(); o.Result != ResultOK {
		t.Errorf("outcome %+v", o)
	}
}

func TestCacheKeyDropsCredentials(t *testing.T) {
	a := cacheKey("gemini", "p", "h", "/v1beta/models/m:streamGenerateContent?alt=sse&key=AIza1", true, nil, []byte("{}"))
	b := cacheKey("gemini", "p", "h", "/v1beta/models/m:streamGenerateContent?key=AIza2&alt=sse", true, nil, []byte("{}"))
	c := cacheKey("gemini", "p", "h", "/v1beta/models/m:streamGenerateContent", true, nil, []byte("{}"))
	if a != b || a == c || len(a) != 32 {
		t.Errorf("keys %s %s %s", a, b, c)
	}
}

func TestCacheEntryRoundTrip(t *testing.T) {
	e := cacheEntry{Status: 200, Headers: []Header{{"content-type", "text/event-stream"}}, Model: "claude-sonnet-4-5-20250929",
		Stream: true, Usage: accounting.Usage{InputTokens: 3, OutputTokens: 9, ServiceTier: "standard"}, StoredAt: t0, Body: []byte(sseStart)}
	got, err := decodeEntry(encodeEntry(e))
	if err != nil || got.Status != 200 || got.Model != e.Model || !got.Stream || got.Usage != e.Usage || !got.StoredAt.Equal(t0) ||
		!bytes.Equal(got.Body, e.Body) || len(got.Headers) != 1 || got.Headers[0] != e.Headers[0] {
		t.Fatalf("%+v %v", got, err)
	}
	for _, bad := range []cacheEntry{
		{Status: 500},
		{Status: 200, Headers: []Header{{"content-length", "9"}}},
		{Status: 200, Headers: []Header{{"x-evil", "a\r\nset-cookie: x"}}},
		{Status: 200, Headers: []Header{{"X-Upper", "v"}}},
		{Status: 200, Usage: accounting.Usage{InputTokens: -1}},
	} {
		if _, err := decodeEntry(encodeEntry(bad)); err == nil {
			t.Errorf("decoded %+v", bad)
		}
	}
}

// FuzzDecodeEntry: any bytes from the store decode to an error or to an
// entry safe to send, and an entry encoded decodes to itself.
func FuzzDecodeEntry(f *testing.F) {
	f.Add(encodeEntry(cacheEntry{Status: 200, Headers: []Header{{"content-type", "application/json"}}, Body: []byte(messageJSON), StoredAt: t0}))
	f.Add([]byte{1, 2, '{', '}'})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEntry(b)
		if err != nil {
			return
		}
		if e.Status < 200 || e.Status > 299 || !e.Usage.Plausible() {
			t.Fatalf("unsafe entry %+v", e)
		}
		for _, h := range e.Headers {
			if !validHeaderName(h.Name) || !validHeaderValue(h.Value) {
				t.Fatalf("unsafe header %q", h)
			}
		}
		again, err := decodeEntry(encodeEntry(e))
		if err != nil || !bytes.Equal(again.Body, e.Body) || again.Status != e.Status {
			t.Fatalf("re-encoding: %v", err)
		}
	})
}

// FuzzCacheability: no request body makes the check panic, and what it
// calls cacheable always set temperature 0 under the default shape.
func FuzzCacheability(f *testing.F) {
	f.Add([]byte(detBody))
	f.Add([]byte(`{"temperature":0,"tools":[{"type":"web_search_20250305"}],"n":1}`))
	f.Add([]byte(`{"temperature":-0.0,"n":1.5}`))
	shapes := []policy.CacheShape{{}}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, d := range []string{"anthropic", "openai"} {
			_ = cacheability(d, b, &wireRequestNone, shapes)
		}
		_ = responseComplete("anthropic", true, b)
		_ = responseComplete("openai", true, b)
		_ = responseComplete("openai", false, b)
	})
}

var wireRequestNone wire.Request
