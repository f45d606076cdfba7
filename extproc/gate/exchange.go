package gate

import (
	"context"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// phase is where an Exchange is in its lifecycle. It only moves forward.
type phase uint8

const (
	phaseBody      phase = iota // request headers seen; the body is awaited
	phaseForwarded              // the body was admitted and forwarded
	phaseResponse               // response headers seen; the body is being metered
	phaseDone                   // answered locally, metered, or not governed
)

// Exchange is one HTTP request and its response.
type Exchange struct {
	g     *Gate
	ctx   context.Context
	cfg   *policy.Config
	phase phase

	dialect     dialect.Dialect
	caller      policy.Caller
	tenant      string
	policy      *policy.Policy
	requestID   string
	clientReqID string

	req            wire.Request
	requestedModel string
	model          string
	modelLabel     string
	rewriteReason  string
	price          accounting.Price
	estimate       accounting.Usage
	// rawInput is the dialect's uncalibrated input estimate; estimate's
	// input is rawInput × the model's calibration factor (calibrate.go).
	rawInput     int64
	estimateCost accounting.NanoUSD
	// output is the part of the reservation the store may clamp (a full
	// budget reservation), zero otherwise; clamped is the output limit the
	// store granted when it clamped, written into the request (reserve.go).
	output  limiter.Output
	clamped int64
	// pricedAt is when the body arrived and admission began: the instant
	// whose prices apply to the request, from its estimate to its settle.
	pricedAt time.Time
	unpriced bool   // the model has no price: charged at the fallback
	served   string // the model a JSON response reports serving; "" if none

	reservation *limiter.Reservation
	decision    limiter.Decision
	decisionTag string
	forwardedAt time.Time

	status   int
	parser   wire.StreamParser
	respBody []byte
	coding   respCoding

	outcome *Outcome
	// charge is what Settle charges the reservation, fixed with the outcome.
	charge limiter.Charge

	rc   cacheState    // the response cache's part (cache.go)
	up   upstreamState // the upstream view's part (upstream.go)
	pace paceState     // pacing's part (pacing.go)

	// levels are the caller's levels in its org (org first, its own last)
	// when the org is configured under orgs:, else nil: a one-level org
	// held to its policy.
	levels []policy.ResolvedLevel
	// lane is the request's lane (nil: its policy has none), laneIndex its
	// place in the policy's lanes, highest priority first (lanes.go).
	lane      *policy.Lane
	laneIndex int
	// retryIn is how long until the capacity a denial names is expected
	// back: set by every denial that waiting can cure (rate, concurrency,
	// upstream cool-down or pacing), 0 otherwise. A denial with retryIn > 0
	// may wait in the queue (queue.go) instead of being answered at once.
	retryIn time.Duration
	q       queueState
	// batch marks a batch submission, b a batch's state (batch.go).
	batch bool
	b     batchState
	oa    openaiBatchState // the OpenAI Batch API's part (batch_openai.go)
}

// Limits on bodies the gate holds. Envoy bounds BUFFERED bodies by its own
// buffer limit; these bound what the gate accumulates itself.
const (
	// MaxRequestBody bounds a request body assembled from STREAMED chunks.
	MaxRequestBody = 64 << 20
	// maxResponseJSON bounds a JSON response kept for its usage; past it the
	// response is charged as one without usage.
	maxResponseJSON = 16 << 20
)

// Begin starts the lifecycle of one request at its headers. ctx is the
// stream's: it bounds the admission round trip, never the final settle.
func (g *Gate) Begin(ctx context.Context, r Request) (*Exchange, HeadersVerdict) {
	x := &Exchange{g: g, ctx: ctx, cfg: g.opts.Config.Load()}
	h := r.Headers
	if h == nil {
		h = HeaderList(nil)
	}
	x.clientReqID, _ = h.Get("x-request-id")
	refusal := x.identify(h, r.Envoy)
	var known bool
	if x.cfg.InOrg(x.caller) {
		// A caller of a configured org is admitted at every level of it:
		// the org keys the shared state, each level keeps its own.
		res := g.levels.resolve(x.cfg, g.opts.Config.Load(), x.caller, r.RoutePolicy)
		x.tenant, x.policy, x.levels, known = res.Org, res.Policy, res.Levels, res.KnownRoute
	} else {
		x.policy, known = x.cfg.Policy(x.tenant, r.RoutePolicy)
	}
	if !known {
		g.obs.Unconfigured(UnconfiguredRoutePolicy)
	}
	x.chooseLane(r.RouteLane, r.Envoy)
	if !known && g.warned.add(r.RoutePolicy) {
		// Route metadata is the operator's, so the names are few: warn once
		// each (and never for more than a bounded number of names).
		g.log.Warn("route names an unknown policy; using the tenant's or default policy", "policy", r.RoutePolicy, "used", x.policy.Name)
	}

	var v HeadersVerdict
	// x-tokenwarden-model is tokenwarden's to set: routes may match on it,
	// so a client's own value is removed and the route picked again without it.
	if _, ok := h.Get(contract.ModelHeader); ok {
		v.Edits.remove(contract.ModelHeader)
	}
	path, _ := h.Get(":path")
	method, _ := h.Get(":method")
	x.dialect = dialect.ForPath(path)
	if isBatchSubmit(method, path) {
		// Message Batches: governed like the Messages requests they hold
		// (batch.go), refused and answered in their dialect.
		x.dialect, x.batch = dialect.ForPath(anthropic.MessagesPath), true
	}
	if x.dialect != nil && websocket(h) {
		// One upgraded connection carries any number of requests in opaque
		// frames (the Responses API's WebSocket mode:
		// https://platform.openai.com/docs/api-reference/responses): nothing
		// could be estimated, admitted or settled, so it is refused rather
		// than let through unmetered.
		if refusal != nil {
			v.Reply = refusal()
			return x, v
		}
		v.Reply = x.reject(400, wire.ErrorInvalidRequest, "", "tokenwarden: a WebSocket connection cannot be metered; send each request over HTTP", ResultInvalidRequest, nil)
		return x, v
	}
	if v, ok := x.beginOpenAIBatch(h, method, path, refusal == nil); ok {
		return x, v
	}
	if id, ok := anthropic.BatchResultsPath(path); ok && method == "GET" && refusal == nil {
		// A batch's results settle the batch (batch.go); an unidentified
		// download has nothing of its own to settle and passes.
		x.dialect, x.b.resultsID = dialect.ForPath(anthropic.MessagesPath), id
		return x, x.beginBatchResults()
	}
	if x.dialect == nil || method != "POST" {
		x.phase = phaseDone
		v.PassThrough = true
		g.obs.Outcome(&Outcome{Dialect: PassThroughDialect, Tenant: x.tenant, TenantLabel: x.cfg.TenantLabel(x.tenant),
			Policy: x.policy.Name, ModelLabel: policy.OtherLabel, Result: ResultOK, Decision: "passthrough"})
		return x, v
	}
	if refusal != nil {
		v.Reply = refusal()
		return x, v
	}
	if r.EndOfStream {
		v.Reply = x.reject(400, wire.ErrorInvalidRequest, "", "tokenwarden: the request has no body", ResultInvalidRequest, nil)
		return x, v
	}
	if ce, ok := h.Get("content-encoding"); ok {
		if enc, known := wire.ParseContentEncoding(ce); !known || enc != wire.Identity {
			v.Reply = x.unsupportedEncoding(ce)
			return x, v
		}
	}
	x.requestID = g.nextRequestID()
	x.cacheRequest(h)
	x.upstreamRequest(h, r.RoutePolicy)
	return x, v
}

// Outcome returns how the request ended; nil while it is still going.
func (x *Exchange) Outcome() *Outcome { return x.outcome }

// Tenant returns the tenant the request is charged to.
func (x *Exchange) Tenant() string { return x.tenant }

// Dialect returns the request's dialect, nil for a request tokenwarden does
// not govern.
func (x *Exchange) Dialect() dialect.Dialect { return x.dialect }

// Done reports that the request needs nothing more from the gate but its
// Settle.
func (x *Exchange) Done() bool { return x.phase == phaseDone }

func (x *Exchange) policyName() string {
	if x.policy == nil {
		return ""
	}
	return x.policy.Name
}

// websocket reports a request to upgrade the connection to a WebSocket: an
// HTTP/1.1 upgrade, or HTTP/2's extended CONNECT (RFC 8441), whose
// :protocol Envoy reports as is.
func websocket(h Headers) bool {
	if u, ok := h.Get("upgrade"); ok && strings.Contains(strings.ToLower(u), "websocket") {
		return true
	}
	p, _ := h.Get(":protocol")
	return strings.EqualFold(p, "websocket")
}
