package gate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// keyFingerprint is the documented tenant of an API key, computed here
// independently: "key-" and the first 16 hex digits of its SHA-256.
func keyFingerprint(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "key-" + hex.EncodeToString(sum[:8])
}

// idFingerprint is the documented name of an identity value that is not a
// plain name: "id-" and the first 16 hex digits of its SHA-256.
func idFingerprint(v string) string {
	sum := sha256.Sum256([]byte(v))
	return "id-" + hex.EncodeToString(sum[:8])
}

// safeName is what may appear in store keys, metrics and logs as a tenant.
var safeName = regexp.MustCompile(`^[A-Za-z0-9._@+-]{1,128}$`)

const unknownPolicyWarning = "route names an unknown policy; using the tenant's or default policy"

func TestIdentity(t *testing.T) {
	const key = "sk-ant-api03-abcdefghijklmnop"
	cases := []struct {
		name        string
		headers     []Header
		routePolicy string
		wantTenant  string
		wantLabel   string
		wantPolicy  string
		wantWarning bool
		// unenforced: the policy has neither limits nor budgets, so the
		// store is never asked.
		unenforced bool
	}{
		{name: "x-tenant-id", headers: []Header{tenantHeader("acme")}, wantTenant: "acme", wantLabel: "acme", wantPolicy: "default"},
		{name: "x-tenant-id of an unconfigured tenant", headers: []Header{tenantHeader("zeta")}, wantTenant: "zeta", wantLabel: "other", wantPolicy: "default"},
		{name: "the first source wins over an API key", headers: []Header{{"x-api-key", key}, tenantHeader("acme")}, wantTenant: "acme", wantLabel: "acme", wantPolicy: "default"},
		{name: "API key: its fingerprint", headers: []Header{{"x-api-key", key}}, wantTenant: keyFingerprint(key), wantLabel: "other", wantPolicy: "default"},
		{name: "bearer token: the same fingerprint as the key", headers: []Header{{"authorization", "Bearer " + key}}, wantTenant: keyFingerprint(key), wantLabel: "other", wantPolicy: "default"},
		{name: "unsafe tenant header fingerprinted", headers: []Header{tenantHeader("acme corp/{x}")}, wantTenant: idFingerprint("acme corp/{x}"), wantLabel: "other", wantPolicy: "default"},
		{name: "blank tenant header falls through to the key", headers: []Header{tenantHeader("  "), {"x-api-key", key}}, wantTenant: keyFingerprint(key), wantLabel: "other", wantPolicy: "default"},
		{name: "nothing: the default tenant", wantTenant: "guest", wantLabel: "other", wantPolicy: "default"},
		{name: "the tenant's own policy", headers: []Header{tenantHeader("beta")}, wantTenant: "beta", wantLabel: "beta", wantPolicy: "batch"},
		{name: "the route's policy", headers: []Header{tenantHeader("acme")}, routePolicy: "batch", wantTenant: "acme", wantLabel: "acme", wantPolicy: "batch"},
		{name: "the route's policy beats the tenant's", headers: []Header{tenantHeader("beta")}, routePolicy: "free", wantTenant: "beta", wantLabel: "beta", wantPolicy: "free", unenforced: true},
		{name: "unknown route policy: the default", headers: []Header{tenantHeader("acme")}, routePolicy: "nope", wantTenant: "acme", wantLabel: "acme", wantPolicy: "default", wantWarning: true},
		{name: "unknown route policy: the tenant's", headers: []Header{tenantHeader("beta")}, routePolicy: "nope", wantTenant: "beta", wantLabel: "beta", wantPolicy: "batch", wantWarning: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, baseYAML)
			x, hv := h.g.Begin(context.Background(), Request{Headers: post(pathMessages, tc.headers...), RoutePolicy: tc.routePolicy})
			if hv.PassThrough || hv.Reply != nil {
				t.Fatalf("Begin: %+v", hv)
			}
			if bv := x.Body([]byte(sonnetBody)); bv.Reply != nil {
				t.Fatalf("refused: %s", bv.Reply.Body)
			}
			if got := x.Tenant(); got != tc.wantTenant {
				t.Errorf("tenant = %q, want %q", got, tc.wantTenant)
			}
			if strings.Contains(x.Tenant(), key) {
				t.Errorf("tenant %q holds the API key", x.Tenant())
			}
			if !safeName.MatchString(x.Tenant()) {
				t.Errorf("tenant %q is not safe in store keys", x.Tenant())
			}
			if got := x.policyName(); got != tc.wantPolicy {
				t.Errorf("policy = %q, want %q", got, tc.wantPolicy)
			}
			if tc.unenforced {
				if len(h.obs.admissions)+len(h.obs.storeCalls) != 0 || x.reservation != nil || x.decisionTag != "allowed" {
					t.Errorf("an unenforced policy asked the store: %+v %+v", h.obs.admissions, h.obs.storeCalls)
				}
			} else {
				if len(h.obs.admissions) != 1 || h.obs.admissions[0] != (admission{tc.wantLabel, "allowed"}) {
					t.Errorf("admissions = %+v, want one allowed for %q", h.obs.admissions, tc.wantLabel)
				}
				// The store keeps the reservation under that tenant.
				if x.reservation == nil || x.reservation.Tenant() != tc.wantTenant {
					t.Errorf("reservation %+v, want one for %q", x.reservation, tc.wantTenant)
				}
			}
			if got := h.logs.count(unknownPolicyWarning); got != map[bool]int{true: 1}[tc.wantWarning] {
				t.Errorf("%d unknown-policy warnings", got)
			}
		})
	}
}

func TestUnknownRoutePolicyWarnedOncePerName(t *testing.T) {
	h := newHarness(t, baseYAML)
	begin := func(route string) {
		h.g.Begin(context.Background(), Request{Headers: post(pathMessages), RoutePolicy: route})
	}
	begin("nope")
	begin("nope")
	begin("")
	begin("batch")
	if got := h.logs.count(unknownPolicyWarning); got != 1 {
		t.Fatalf("one unknown name seen twice: %d warnings, want 1", got)
	}
	begin("nope-2")
	if got := h.logs.count(unknownPolicyWarning); got != 2 {
		t.Fatalf("a second unknown name: %d warnings, want 2", got)
	}
	// The set of names warned about is bounded: past maxWarnedPolicies, new
	// names are neither remembered nor warned about.
	for i := range maxWarnedPolicies + 50 {
		begin(fmt.Sprintf("flood-%d", i))
	}
	if got := h.logs.count(unknownPolicyWarning); got != maxWarnedPolicies {
		t.Fatalf("after a flood of names: %d warnings, want %d", got, maxWarnedPolicies)
	}
	if n := len(h.g.warned.seen); n != maxWarnedPolicies {
		t.Fatalf("the warned set holds %d names, want %d", n, maxWarnedPolicies)
	}
}

func TestPassThrough(t *testing.T) {
	cases := []struct {
		name        string
		headers     HeaderList
		wantDialect bool // the path is a governed one, only the method is not
	}{
		{name: "GET on a governed path", headers: HeaderList{{":method", "GET"}, {":path", pathMessages}}, wantDialect: true},
		{name: "POST on an unknown path", headers: post("/v1/models")},
		{name: "POST on count_tokens", headers: post("/v1/messages/count_tokens")},
		{name: "no headers at all", headers: nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, baseYAML)
			req := Request{} // a nil Headers, as an adapter with nothing to report passes
			if tc.headers != nil {
				req.Headers = append(tc.headers, tenantHeader("acme"))
			}
			x, v := h.g.Begin(context.Background(), req)
			if !v.PassThrough || v.Reply != nil || !x.Done() {
				t.Fatalf("verdict %+v done %v, want pass-through", v, x.Done())
			}
			if (x.Dialect() != nil) != tc.wantDialect {
				t.Errorf("dialect %v", x.Dialect())
			}
			o := h.obs.lastOutcome(t)
			wantTenant, wantLabel := "acme", "acme"
			if tc.headers == nil {
				wantTenant, wantLabel = "guest", "other"
			}
			want := Outcome{Dialect: PassThroughDialect, Tenant: wantTenant, TenantLabel: wantLabel, Policy: "default",
				ModelLabel: "other", Result: ResultOK, Decision: "passthrough"}
			if o != want {
				t.Errorf("outcome %+v\nwant    %+v", o, want)
			}
			// Nothing later in its life reaches the store or the observer.
			if bv := x.Body([]byte(sonnetBody)); bv.Reply != nil || bv.BodyChanged || !bv.Edits.Empty() || string(bv.Body) != sonnetBody {
				t.Errorf("Body after pass-through: %+v", bv)
			}
			if rv := x.ResponseHeaders(HeaderList{{":status", "200"}}, false); rv.Done || rv.Stream || rv.SkipBody || !rv.Edits.Empty() {
				t.Errorf("ResponseHeaders after pass-through: %+v", rv)
			}
			x.Abort()
			if len(h.obs.storeCalls) != 0 || len(h.obs.outcomes) != 1 {
				t.Errorf("store calls %+v, outcomes %d", h.obs.storeCalls, len(h.obs.outcomes))
			}
		})
	}
}

// A client's own x-tokenwarden-model is removed whatever becomes of the
// request: routes match on tokenwarden's value only.
func TestClientModelHeaderRemoved(t *testing.T) {
	spoof := Header{contract.ModelHeader, "claude-opus-4-5"}
	for _, hdrs := range []HeaderList{
		post(pathMessages, spoof),
		{{":method", "GET"}, {":path", "/v1/models"}, spoof},
	} {
		h := newHarness(t, baseYAML)
		_, v := h.g.Begin(context.Background(), Request{Headers: hdrs})
		if len(v.Edits.Remove) != 1 || v.Edits.Remove[0] != contract.ModelHeader || len(v.Edits.Set) != 0 {
			t.Errorf("%v: edits %+v, want the client's %s removed", hdrs, v.Edits, contract.ModelHeader)
		}
	}
	h := newHarness(t, baseYAML)
	if _, v := h.g.Begin(context.Background(), Request{Headers: post(pathMessages)}); !v.Edits.Empty() {
		t.Errorf("without the header: edits %+v", v.Edits)
	}
}

func TestRequestWithoutBody(t *testing.T) {
	cases := []struct {
		path, wantType string
	}{
		{pathMessages, "invalid_request_error"},
		{pathChat, "invalid_request_error"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			h := newHarness(t, baseYAML)
			x, v := h.g.Begin(context.Background(), Request{Headers: post(tc.path), EndOfStream: true})
			if v.Reply == nil || v.Reply.Status != 400 || v.PassThrough {
				t.Fatalf("verdict %+v, want a 400 reply", v)
			}
			checkReplyFraming(t, v.Reply)
			typ, _, msg := errorType(t, v.Reply.Body)
			if typ != tc.wantType || !strings.Contains(msg, "no body") {
				t.Errorf("reply body %s", v.Reply.Body)
			}
			if tc.path == pathMessages && !strings.Contains(string(v.Reply.Body), `"type":"error"`) {
				t.Errorf("not the Messages API error shape: %s", v.Reply.Body)
			}
			if tc.path == pathChat && !strings.Contains(string(v.Reply.Body), `"param":null`) {
				t.Errorf("not the Chat Completions error shape: %s", v.Reply.Body)
			}
			o := h.obs.lastOutcome(t)
			if o.Result != ResultInvalidRequest || o.Decision != string(ResultInvalidRequest) || o.Metered || v.Reply.Details != "tokenwarden_invalid_request" {
				t.Errorf("outcome %+v details %q", o, v.Reply.Details)
			}
			if !x.Done() || len(h.obs.storeCalls) != 0 {
				t.Errorf("done %v, store calls %+v", x.Done(), h.obs.storeCalls)
			}
		})
	}
}

// Callers the mesh authenticated, and what becomes of callers it did not
// or that the configuration does not name.
func TestIdentityModes(t *testing.T) {
	const cfg = `
identity:
  from:
    - jwt: {org: org_id, team: team, user: sub}
    - ext_authz: {org: tenant}
    - peer: {}
    - header: x-team
      trusted: true
      level: team
    - api_key_of: x-api-key
  unknown: %s
  unconfigured: %s
  unconfigured_buckets: 4
policies:
  default:
    limits: {requests_per_minute: 1000}
tenants:
  alice: {}
  search: {}
  acme: {}
  search.indexer: {}
`
	jwt := EnvoyValues{Meta: map[string]map[string]any{policy.JWTNamespace: {"payload": map[string]any{"org_id": "acme", "team": "search", "sub": "alice"}}}}
	orgOnly := EnvoyValues{Meta: map[string]map[string]any{policy.JWTNamespace: {"payload": map[string]any{"org_id": 4711.0}}}}
	authz := EnvoyValues{Meta: map[string]map[string]any{policy.ExtAuthzNamespace: {"tenant": "acme"}}}
	peer := EnvoyValues{Attrs: map[string]string{policy.PeerAttribute: "spiffe://cluster.local/ns/search/sa/indexer"}}
	cases := []struct {
		name                  string
		unknown, unconfigured string
		env                   Envoy
		headers               []Header
		wantTenant            string
		wantStatus            int
	}{
		{name: "jwt: the most specific level", unknown: "deny", unconfigured: "deny", env: jwt, wantTenant: "alice"},
		{name: "jwt wins over a trusted header", unknown: "deny", unconfigured: "deny", env: jwt, headers: []Header{{"x-team", "other"}}, wantTenant: "alice"},
		{name: "jwt numeric claim, unconfigured, own", unknown: "deny", unconfigured: "own", env: orgOnly, wantTenant: "4711"},
		{name: "ext_authz metadata", unknown: "deny", unconfigured: "deny", env: authz, wantTenant: "acme"},
		{name: "mTLS peer: namespace.service account", unknown: "deny", unconfigured: "deny", env: peer, wantTenant: "search.indexer"},
		{name: "trusted header at team level", unknown: "deny", unconfigured: "deny", headers: []Header{{"x-team", "search"}}, wantTenant: "search"},
		{name: "unknown caller refused", unknown: "deny", unconfigured: "own", headers: []Header{tenantHeader("acme")}, wantStatus: 401},
		{name: "unknown caller defaulted", unknown: "default:acme", unconfigured: "deny", wantTenant: "acme"},
		{name: "unconfigured caller refused", unknown: "deny", unconfigured: "deny", headers: []Header{{"x-api-key", "sk-x"}}, wantStatus: 403},
		{name: "unconfigured caller in a bucket", unknown: "deny", unconfigured: "buckets", headers: []Header{{"x-api-key", "sk-x"}},
			wantTenant: (&policy.Identity{UnconfiguredBuckets: 4}).Bucket(policy.Fingerprint("sk-x"))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, fmt.Sprintf(cfg, tc.unknown, tc.unconfigured))
			x, hv := h.g.Begin(context.Background(), Request{Headers: post(pathMessages, tc.headers...), Envoy: tc.env})
			if tc.wantStatus != 0 {
				if hv.Reply == nil || hv.Reply.Status != tc.wantStatus || headerOf(hv.Reply.Headers, contract.DeniedHeader) != "identity" {
					t.Fatalf("want a %d identity refusal, got %+v", tc.wantStatus, hv)
				}
				if len(h.obs.storeCalls) != 0 || x.Outcome() == nil || x.Outcome().Result != ResultDenied {
					t.Errorf("a refused caller reached the store or was not recorded: %+v %+v", h.obs.storeCalls, x.Outcome())
				}
				if strings.Contains(string(hv.Reply.Body), "key-") || strings.Contains(string(hv.Reply.Body), "acme") {
					t.Errorf("the refusal names a caller: %s", hv.Reply.Body)
				}
				return
			}
			if hv.Reply != nil {
				t.Fatalf("refused: %d %s", hv.Reply.Status, hv.Reply.Body)
			}
			if got := x.Tenant(); got != tc.wantTenant {
				t.Errorf("tenant = %q, want %q", got, tc.wantTenant)
			}
		})
	}
}

func headerOf(hs []Header, name string) string {
	for _, h := range hs {
		if h.Name == name {
			return h.Value
		}
	}
	return ""
}
