package gate

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// The exact response cache (policy response_cache:). Where it sits in the
// lifecycle:
//
//   - Begin notes what of the request headers matters to it: the path and
//     authority, the headers that change the answer (anthropic-version,
//     anthropic-beta, openai-beta), and the client's Cache-Control.
//   - Body, after the model rules and every edit — so the key is the
//     request exactly as it would be forwarded — and before admission:
//     a cacheable request is looked up (one round trip, only for policies
//     that enable the cache). A hit is answered at once as a local reply
//     and never reaches the provider, its budgets or its token limits;
//     with count_requests it is admitted against requests_per_minute with
//     zero tokens and zero cost and settled at zero (two more round trips,
//     the settle after the reply).
//   - A miss is forwarded as any request. Its answer is kept, as the client
//     got it, up to max_entry_bytes while it is metered; Settle — after the
//     final answer went to the client — stores it when it is complete: a
//     2xx whose usage was measured, whose body ended, with a stop reason
//     that says the model finished (see responseComplete).
//
// x-tokenwarden-cache on the answer says which: hit, miss (looked up, not
// found, or the cache failed), bypass (not cacheable, refused by the
// client, or the policy has no cache).
//
// Folding the lookup into the admission script is the next step: a hit
// would then cost one round trip even with count_requests.

// CacheHeader is the response header that names the cache's part in an
// answer.
const CacheHeader = "x-tokenwarden-cache"

// Values of CacheHeader, and the results of a lookup.
const (
	CacheHit    = "hit"
	CacheMiss   = "miss"
	CacheBypass = "bypass"
	// CacheError is a lookup that failed (the store down or slow): the
	// client sees a miss.
	CacheError = "error"
)

// ResultCacheHit is the Result of a request answered from the cache.
const ResultCacheHit Result = "cache_hit"

// Why a request bypasses the cache, the values of
// tokenwarden_response_cache_lookups_total{reason} when result="bypass".
const (
	BypassDialect     = "dialect"      // an API the cache does not serve (Responses, Gemini)
	BypassSampling    = "sampling"     // no cacheable shape matches (temperature, seed)
	BypassChoices     = "choices"      // n > 1: several samples asked for
	BypassServerTools = "server_tools" // tools the provider runs (search, code, MCP): live results
	BypassWarmup      = "warmup"       // max_tokens 0: a prompt-cache warm-up, the provider must see it
	BypassBackground  = "background"   // a background response
	BypassNoCache     = "no_cache"     // Cache-Control: no-cache (or Pragma: no-cache)
	BypassNoStore     = "no_store"     // Cache-Control: no-store
)

// Results of filling the cache after a miss, the values of
// tokenwarden_response_cache_fills_total{result}.
const (
	FillStored        = "stored"
	FillTooLarge      = "too_large"      // the body passed max_entry_bytes
	FillIncomplete    = "incomplete"     // cut, usage missing or estimated, no terminal event
	FillTruncated     = "truncated"      // stopped at max_tokens / length
	FillRefused       = "refused"        // a refusal or content filter
	FillUpstreamError = "upstream_error" // a non-2xx status or an error event
	FillEncoded       = "encoded"        // a content-encoding the gate does not read
	FillRejected      = "rejected"       // the store would not keep it (over the org's bound)
	FillStoreError    = "store_error"    // the store failed
)

// CacheObserver receives the response cache's observations. The gate's
// Observer implements it optionally (metrics do), so observers that predate
// the cache keep working.
type CacheObserver interface {
	// CacheLookup records one request of a policy with the cache on: hit,
	// miss, error or bypass (with its reason).
	CacheLookup(tenantLabel, result, reason string)
	// CacheHit records what a hit saved: the usage the stored answer
	// reported, priced now.
	CacheHit(tenantLabel, modelLabel string, saved accounting.Usage, cost accounting.NanoUSD)
	// CacheFill records what became of a miss's answer.
	CacheFill(result string)
	// CacheStored records a Put that stored: the partition's bytes after
	// it (partition is a configured tenant or "shared:<policy>"; "" for
	// tenants without a bounded label) and the entries it evicted.
	CacheStored(partition string, orgBytes int64, evicted int)
	// CacheCall records one store round trip, "get" or "put".
	CacheCall(op string, took time.Duration, err error)
}

type nopCacheObserver struct{}

func (nopCacheObserver) CacheLookup(string, string, string)                            {}
func (nopCacheObserver) CacheHit(string, string, accounting.Usage, accounting.NanoUSD) {}
func (nopCacheObserver) CacheFill(string)                                              {}
func (nopCacheObserver) CacheStored(string, int64, int)                                {}
func (nopCacheObserver) CacheCall(string, time.Duration, error)                        {}

func (g *Gate) cacheObs() CacheObserver {
	if co, ok := g.obs.(CacheObserver); ok {
		return co
	}
	return nopCacheObserver{}
}

// cacheState is one exchange's part in the cache.
type cacheState struct {
	// From the request headers.
	path, authority  string
	noCache, noStore bool
	vary             []Header
	// verdict is CacheHeader's value, "" before the lookup (a request
	// refused earlier carries none).
	verdict  string
	org, key string
	// fill: the answer is to be stored if it turns out complete; skip
	// names why it will not be, once known.
	fill bool
	skip string
	// The answer as the client got it.
	headersSeen bool
	status      int
	headers     []Header
	body        []byte
	ended       bool
	done        bool // fillCache ran
}

// varyHeaders are the request headers that change a provider's answer
// and are part of the key: the API version and beta features. Every
// other header either only identifies the caller (x-api-key,
// authorization, openai-organization/-project, user agents) or changes
// nothing the model says.
var varyHeaders = []string{"anthropic-version", "anthropic-beta", "openai-beta"}

// cacheRequest notes at request headers what the cache needs of them.
func (x *Exchange) cacheRequest(h Headers) {
	c := &x.rc
	c.path, _ = h.Get(":path")
	c.authority, _ = h.Get(":authority")
	for _, name := range varyHeaders {
		if v, ok := h.Get(name); ok {
			c.vary = append(c.vary, Header{name, v})
		}
	}
	// Request directives (RFC 9111 §5.2.1): no-cache refuses a stored
	// answer, and the new one may still be stored; no-store refuses both.
	// Pragma: no-cache counts as no-cache without Cache-Control (§5.4).
	cc, hasCC := h.Get("cache-control")
	if !hasCC {
		if p, ok := h.Get("pragma"); ok && hasDirective(p, "no-cache") {
			c.noCache = true
		}
	}
	c.noCache = c.noCache || hasDirective(cc, "no-cache")
	c.noStore = hasDirective(cc, "no-store")
}

// hasDirective reports a comma-separated directive, case-insensitively,
// with or without a value (no-cache="x" names headers; still no-cache).
func hasDirective(v, name string) bool {
	for d := range strings.SplitSeq(v, ",") {
		d = strings.TrimSpace(d)
		if i := strings.IndexByte(d, '='); i >= 0 {
			d = strings.TrimSpace(d[:i])
		}
		if strings.EqualFold(d, name) {
			return true
		}
	}
	return false
}

// lookup answers a cacheable request from the cache, or returns nil to
// forward it. body is the body as it would be forwarded, newPath the
// rewritten path ("" when unchanged).
func (x *Exchange) lookup(body []byte, newPath string) *Reply {
	c := &x.rc
	rc := &x.policy.ResponseCache
	store := x.g.opts.ResponseCache
	c.verdict = CacheBypass
	if !rc.Enabled || store == nil {
		return nil
	}
	obs := x.g.cacheObs()
	tenantLabel := x.cfg.TenantLabel(x.tenant)
	if reason := cacheability(x.dialect.Name(), body, &x.req, rc.Cacheable); reason != "" {
		obs.CacheLookup(tenantLabel, CacheBypass, reason)
		return nil
	}
	if x.tenant == "" || strings.IndexByte(x.tenant, 0) >= 0 {
		// Not a name the store keys by (a NUL marks shared partitions).
		obs.CacheLookup(tenantLabel, CacheBypass, BypassDialect)
		return nil
	}
	c.org = x.tenant
	if rc.Shared {
		c.org = limiter.SharedCacheOrg(x.policy.Name)
	}
	p := c.path
	if newPath != "" {
		p = newPath
	}
	c.key = cacheKey(x.dialect.Name(), x.policy.Name, c.authority, p, x.req.Stream, c.vary, body)
	c.fill = !c.noStore
	switch {
	case c.noStore:
		obs.CacheLookup(tenantLabel, CacheBypass, BypassNoStore)
		return nil
	case c.noCache:
		obs.CacheLookup(tenantLabel, CacheBypass, BypassNoCache)
		return nil
	}
	start := time.Now()
	v, ok, err := store.Get(x.ctx, c.org, c.key)
	obs.CacheCall("get", time.Since(start), err)
	if err != nil {
		c.verdict = CacheMiss
		obs.CacheLookup(tenantLabel, CacheError, "")
		return nil
	}
	var e cacheEntry
	if ok {
		if e, err = decodeEntry(v); err != nil || e.Stream != x.req.Stream {
			// Not what this gate wrote; the answer forwarded now replaces it.
			if n, ok := x.g.invalidLog.Allow(time.Now()); ok {
				x.g.log.Warn("response cache entry unreadable; treated as a miss", "tenant", x.tenant, "err", err, "suppressed_since_last", n)
			}
			ok = false
		}
	}
	if !ok {
		c.verdict = CacheMiss
		obs.CacheLookup(tenantLabel, CacheMiss, "")
		return nil
	}
	c.verdict, c.fill = CacheHit, false
	obs.CacheLookup(tenantLabel, CacheHit, "")
	return x.serveHit(&e)
}

// serveHit answers from a stored entry: the provider's status, content
// headers and body as the first client got them.
func (x *Exchange) serveHit(e *cacheEntry) *Reply {
	x.served = e.Model
	x.priceServed()
	saved := x.price.Cost(e.Usage).Total
	x.forwardedAt = x.g.opts.Now()
	if x.policy.ResponseCache.CountRequests && x.countsRequests() {
		if reply := x.admitHit(); reply != nil {
			return reply
		}
	}
	x.decisionTag = string(ResultCacheHit)
	x.phase = phaseDone
	x.charge = limiter.Charge{} // settled at zero, when admitted at all
	x.outcome = &Outcome{
		Dialect: x.dialect.Name(), Tenant: x.tenant, TenantLabel: x.cfg.TenantLabel(x.tenant), Policy: x.policy.Name,
		RequestedModel: x.requestedModel, Model: x.model, ModelLabel: x.modelLabel,
		Result: ResultCacheHit, Decision: x.decisionTag, Usage: e.Usage,
	}
	x.g.obs.Outcome(x.outcome)
	x.g.cacheObs().CacheHit(x.outcome.TenantLabel, x.modelLabel, e.Usage, saved)

	var h HeaderEdits
	for _, eh := range e.Headers {
		h.set(eh.Name, eh.Value)
	}
	h.set(CacheHeader, CacheHit)
	// Age (RFC 9111 §5.1): how long ago the answer was made.
	h.set("age", strconv.FormatInt(max(0, int64(x.g.opts.Now().Sub(e.StoredAt)/time.Second)), 10))
	// The request id the SDKs show names this answer in tokenwarden's logs;
	// the provider's names another request, so it was not kept.
	h.set(x.dialect.RequestIDHeader(), x.requestID)
	if x.rewriteReason != "" {
		h.set(contract.ModelRewrittenHeader, x.requestedModel+" -> "+x.model)
	}
	x.rateLimitHeaders(&h)
	h.set("content-length", strconv.Itoa(len(e.Body)))
	return &Reply{Status: e.Status, Headers: h.Set, Body: e.Body, Details: "tokenwarden_cache_hit"}
}

// countsRequests reports whether any of the caller's levels limits
// requests per minute.
func (x *Exchange) countsRequests() bool {
	if len(x.levels) == 0 {
		return x.policy.Limits.RequestsPerMinute > 0
	}
	for _, l := range x.levels {
		if l.Limits.RequestsPerMinute > 0 {
			return true
		}
	}
	return false
}

// admitHit counts a hit against requests_per_minute only: zero tokens, zero
// cost, no budgets (a hit costs the provider nothing, so it must not be
// refused for an exhausted budget either). The reservation is settled at
// zero when the stream ends.
func (x *Exchange) admitHit() *Reply {
	g := x.g
	// Every level's requests per minute, in that level's own state: a
	// user's 60 a minute counts a hit as the user's, not the org's.
	l, levels, _ := x.levelRequest(g.opts.Now())
	var ll []limiter.LevelLimits
	for _, lv := range levels {
		if lv.RequestsPerMinute > 0 {
			ll = append(ll, limiter.LevelLimits{Key: lv.Key, RequestsPerMinute: lv.RequestsPerMinute})
		}
	}
	start := time.Now()
	d, res, err := limiter.Reserve(x.ctx, g.opts.Store, limiter.AdmitRequest{
		Tenant: x.tenant, RequestID: x.requestID, Model: x.modelLabel,
		Limits:      limiter.Limits{RequestsPerMinute: l.RequestsPerMinute, Burst: l.Burst, LeaseTTL: l.LeaseTTL},
		LevelLimits: ll,
		OnFailure:   x.policy.OnFailure,
	})
	x.reservation = res
	g.obs.StoreCall("admit", time.Since(start), err)
	tenantLabel := x.cfg.TenantLabel(x.tenant)
	if err != nil {
		g.obs.Admission(tenantLabel, "failed_closed")
		x.decisionTag = "failed_closed"
		if n, ok := g.refusals.Allow(time.Now()); ok {
			g.log.Error("admission store failed on a cache hit; policy fails closed", "tenant", x.tenant, "policy", x.policy.Name, "err", err, "suppressed_since_last", n)
		}
		return x.reject(503, wire.ErrorUnavailable, "", "tokenwarden: the limits store is unavailable and this policy fails closed; retry shortly", ResultStoreError, nil)
	}
	x.keepDecision(d)
	if !d.Allowed {
		x.decisionTag = "denied_" + string(d.Denied)
		g.obs.Admission(tenantLabel, x.decisionTag)
		return x.deny(d)
	}
	g.obs.Admission(tenantLabel, "allowed")
	return nil
}

// cacheResponseHeaders adds CacheHeader to a forwarded answer and notes what
// of its headers an entry keeps.
func (x *Exchange) cacheResponseHeaders(h Headers, edits *HeaderEdits) {
	c := &x.rc
	if c.verdict == "" {
		return
	}
	edits.set(CacheHeader, c.verdict)
	if !c.fill {
		return
	}
	c.headersSeen, c.status = true, x.status
	if x.status < 200 || x.status > 299 {
		c.skip = FillUpstreamError
		return
	}
	if ce, ok := h.Get("content-encoding"); ok && !strings.EqualFold(strings.TrimSpace(ce), "identity") && ce != "" {
		// The meter reads (and so vouches for) plain bodies only.
		c.skip = FillEncoded
		return
	}
	// Content headers only: the provider's rate-limit headers describe its
	// state at that moment, its request id another request, and
	// organization headers the org that paid.
	for _, name := range []string{"content-type"} {
		if v, ok := h.Get(name); ok {
			c.headers = append(c.headers, Header{name, v})
		}
	}
}

// cacheChunk keeps a chunk of the answer for the cache, up to
// max_entry_bytes.
func (x *Exchange) cacheChunk(chunk []byte, endOfStream bool) {
	c := &x.rc
	if endOfStream {
		c.ended = true
	}
	if !c.fill || c.skip != "" {
		return
	}
	if int64(len(c.body)+len(chunk)) > x.policy.ResponseCache.MaxEntryBytes {
		c.skip, c.body = FillTooLarge, nil
		return
	}
	c.body = append(c.body, chunk...)
}

// fillCache stores a miss's answer when it is complete. It runs once, from
// Settle, after the final answer went to the client: the round trip is off
// the client's path.
func (x *Exchange) fillCache() {
	c := &x.rc
	if c.done || !c.fill {
		return
	}
	c.done = true
	obs := x.g.cacheObs()
	result := c.skip
	o := x.outcome
	switch {
	case result != "":
	case !c.headersSeen || !c.ended || o == nil || o.Result != ResultOK || o.Source != SourceMeasured:
		result = FillIncomplete
	default:
		result = responseComplete(x.dialect.Name(), x.req.Stream, c.body)
	}
	if result != "" {
		obs.CacheFill(result)
		return
	}
	served := x.served
	if x.parser != nil {
		served = x.parser.Model()
	}
	entry := encodeEntry(cacheEntry{
		Status: c.status, Headers: c.headers, Model: served, Stream: x.req.Stream,
		Usage: o.Usage, StoredAt: x.g.opts.Now(), Body: c.body,
	})
	rc := &x.policy.ResponseCache
	ctx, cancel := x.g.detached(x.ctx)
	defer cancel()
	start := time.Now()
	r, err := x.g.opts.ResponseCache.Put(ctx, c.org, c.key, entry, rc.TTL, rc.MaxOrgBytes, rc.MaxOrgBytes)
	obs.CacheCall("put", time.Since(start), err)
	switch {
	case err != nil:
		obs.CacheFill(FillStoreError)
		if n, ok := x.g.settles.Allow(time.Now()); ok && !errors.Is(err, limiter.ErrUnavailable) {
			x.g.log.Error("response cache put failed", "tenant", x.tenant, "err", err, "suppressed_since_last", n)
		}
	case !r.Stored:
		obs.CacheFill(FillRejected)
	default:
		obs.CacheFill(FillStored)
		obs.CacheStored(x.cachePartition(), r.OrgBytes, r.Evicted)
	}
}

// cachePartition is the bounded label of the exchange's cache partition.
func (x *Exchange) cachePartition() string {
	if x.policy.ResponseCache.Shared {
		return "shared:" + x.policy.Name
	}
	if l := x.cfg.TenantLabel(x.tenant); l != policy.OtherLabel {
		return l
	}
	return ""
}

// cacheKey is the SHA-256 (its first 128 bits, in hex) of everything that
// decides the provider's answer: the API (dialect, path with its query but
// never a credential in it), the policy and authority (the route, so
// routes to different upstreams never share), streaming or not, the
// headers that change the answer, and the forwarded body byte for byte —
// so the model, messages, system, tools, tool choice, sampling, response
// format, seed and stop are all in it, and so is any field a provider adds
// tomorrow. A cryptographic hash, because a key one member of an org could
// collide on purpose would let it plant answers for another; 128 bits keep
// accidental collisions out of reach (2^64 entries) at half the key size.
func cacheKey(dialectName, policyName, authority, path string, stream bool, vary []Header, body []byte) string {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	field := func(s string) {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
		h.Write([]byte(s))
	}
	field("tokenwarden response cache v1")
	field(dialectName)
	field(policyName)
	field(strings.ToLower(authority))
	field(keyPath(path))
	field(strconv.FormatBool(stream))
	for _, v := range vary {
		field(v.Name)
		field(v.Value)
	}
	field("")
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(body)))])
	h.Write(body)
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// credentialParams are query parameters that carry an API key (Gemini's
// key=: https://ai.google.dev/api#authentication) or a token: never part
// of the key, which must not partition by credential.
var credentialParams = []string{"key", "api_key", "access_token"}

// keyPath is the path with its query in a canonical order and without
// credentials.
func keyPath(p string) string {
	path, rawQuery, ok := strings.Cut(p, "?")
	if !ok {
		return p
	}
	// A malformed pair is dropped by ParseQuery; the rest still counts.
	q, _ := url.ParseQuery(rawQuery)
	for _, c := range credentialParams {
		q.Del(c)
	}
	return path + "?" + q.Encode()
}
