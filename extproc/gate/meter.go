package gate

import (
	"bytes"
	"strings"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// ResponseHeaders reads the provider's answer to a forwarded request: its
// status and content type decide how its body is metered.
func (x *Exchange) ResponseHeaders(h Headers, endOfStream bool) ResponseVerdict {
	if x.phase != phaseForwarded {
		return ResponseVerdict{}
	}
	if h == nil {
		h = HeaderList(nil)
	}
	x.phase = phaseResponse
	st, _ := h.Get(":status")
	x.status = atoiStatus(st)
	x.g.obs.ProviderResponse(x.dialect.Name(), x.status)

	var v ResponseVerdict
	x.rateLimitHeaders(&v.Edits)
	if x.rewriteReason != "" {
		v.Edits.set(contract.ModelRewrittenHeader, x.requestedModel+" -> "+x.model)
	}
	x.cacheResponseHeaders(h, &v.Edits)
	if x.status < 200 || x.status > 299 {
		// Providers do not bill failed requests; the reservation is released
		// in full and the error body is not worth reading.
		x.complete(accounting.Usage{}, SourceMeasured, ResultUpstreamError)
		v.SkipBody, v.Done = true, true
		return v
	}
	if endOfStream {
		x.complete(x.estimateWithoutUsage(0), SourceEstimated, ResultUsageMissing)
		v.Done = true
		return v
	}
	ct, _ := h.Get("content-type")
	if isEventStream(ct) {
		x.parser = x.dialect.NewStreamParser()
		// Usage arrives at the end of a stream the client reads as it goes:
		// each chunk is answered at once, never held whole. Envoy keeps a
		// content-length the mode switch makes wrong, so it goes.
		v.Stream = true
		v.Edits.remove("content-length")
	}
	return v
}

func isEventStream(contentType string) bool {
	return strings.HasPrefix(strings.TrimSpace(strings.ToLower(contentType)), "text/event-stream")
}

func atoiStatus(s string) int {
	n := 0
	for i := 0; i < len(s) && i < 4; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// ResponseBody meters one chunk of the response body; the chunk is never
// retained by a stream parser, and a JSON body is kept (boundedly) until its
// end.
func (x *Exchange) ResponseBody(chunk []byte, endOfStream bool) ChunkVerdict {
	if x.phase == phaseForwarded {
		// A body without response headers (response_header_mode SKIP):
		// metered as a 200 whose framing the first bytes tell.
		x.phase = phaseResponse
		x.status = 200
		if looksLikeSSE(chunk) {
			x.parser = x.dialect.NewStreamParser()
		}
	}
	if x.phase != phaseResponse {
		return ChunkVerdict{}
	}
	x.cacheChunk(chunk, endOfStream)
	if x.parser != nil {
		x.parser.Write(chunk)
	} else if len(x.respBody)+len(chunk) <= maxResponseJSON {
		x.respBody = append(x.respBody, chunk...)
	}
	if !endOfStream {
		return ChunkVerdict{}
	}
	x.finalUsage()
	return ChunkVerdict{Done: true}
}

func looksLikeSSE(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	return bytes.HasPrefix(b, []byte("event:")) || bytes.HasPrefix(b, []byte("data:")) || bytes.HasPrefix(b, []byte(":"))
}

// ResponseEnd meters a response whose end is not a body chunk (it ended in
// trailers). It reports whether the request is now metered.
func (x *Exchange) ResponseEnd() bool {
	if x.phase != phaseResponse && x.phase != phaseForwarded {
		return false
	}
	x.cacheChunk(nil, true)
	x.finalUsage()
	return true
}

// finalUsage meters a response that reached its end.
func (x *Exchange) finalUsage() {
	if x.parser != nil {
		u, final := x.parser.Usage()
		if final && !u.Zero() {
			x.measured(u)
			return
		}
		result := ResultUsageMissing
		if _, _, isErr := x.parser.Error(); isErr {
			result = ResultUpstreamError
		}
		x.complete(x.estimateFromStream(u), SourceEstimated, result)
		return
	}
	if u, served, ok := x.dialect.UsageFromJSON(x.respBody); ok && !u.Zero() {
		x.served = served
		x.measured(u)
		return
	}
	if x.req.Background {
		// The provider answered at once and generates afterwards; the usage
		// appears only on a later GET of the response, another exchange
		// that is not governed. What it will generate is unknown, so the
		// whole reservation is charged.
		x.complete(x.estimate, SourceEstimated, ResultBackground)
		return
	}
	x.complete(x.estimateWithoutUsage(wire.EstimateTokens(x.respBody)), SourceEstimated, ResultUsageMissing)
}

// measured completes with the provider's usage, unless it is impossible —
// a negative or absurdly large count, a sum that would overflow — which is a
// provider or parser fault: then the request is charged its estimate, and
// the fault is logged (boundedly) instead of becoming a bill.
func (x *Exchange) measured(u accounting.Usage) {
	if u.Plausible() {
		x.complete(u, SourceMeasured, ResultOK)
		return
	}
	if n, ok := x.g.invalidLog.Allow(x.g.opts.Now()); ok {
		x.g.log.Warn("provider reported impossible usage; charged at the estimate", "dialect", x.dialect.Name(), "model", x.model,
			"input_tokens", u.InputTokens, "output_tokens", u.OutputTokens, "cache_read_tokens", u.CacheReadTokens,
			"cache_write_tokens", u.CacheWriteTokens(), "suppressed_since_last", n)
	}
	x.complete(x.estimate, SourceEstimated, ResultUsageInvalid)
}

// estimateWithoutUsage is the charge for a request whose response says
// nothing about usage: the input estimate and the given output estimate.
func (x *Exchange) estimateWithoutUsage(output int64) accounting.Usage {
	return accounting.Usage{InputTokens: x.estimate.InputTokens, OutputTokens: output}
}

// estimateFromStream is the charge for a stream that ended without final
// usage: whatever the provider already reported (Anthropic's message_start
// carries the input and cache counts), else the request's input estimate,
// and output estimated from the text that was streamed.
func (x *Exchange) estimateFromStream(u accounting.Usage) accounting.Usage {
	if u.TotalInputTokens() == 0 {
		u.InputTokens = x.estimate.InputTokens
	}
	if est := (x.parser.OutputTextBytes() + 3) / 4; est > u.OutputTokens {
		u.OutputTokens = est
	}
	if x.req.Background && u.OutputTokens < x.estimate.OutputTokens {
		// A background response goes on generating when its stream is cut.
		u.OutputTokens = x.estimate.OutputTokens
	}
	return u
}

// Abort ends an exchange whose stream ended before the gate saw its end —
// the client went away, the upstream reset, Envoy answered locally, the
// adapter failed — and settles it. A request that was admitted but never
// metered is charged from what is known, marked estimated. Abort is safe to
// call at any point, any number of times; after a completed exchange it only
// makes sure the settle ran.
func (x *Exchange) Abort() {
	if x == nil {
		return
	}
	switch x.phase {
	case phaseForwarded, phaseResponse:
		if x.parser != nil {
			pu, final := x.parser.Usage()
			if final && !pu.Zero() {
				// The usage arrived but the stream ended before its last chunk.
				x.measured(pu)
				break
			}
			x.complete(x.estimateFromStream(pu), SourceEstimated, ResultEstimated)
			break
		}
		// No response (or an unfinished JSON body): the provider may well
		// have processed the input, but nothing says how much it generated.
		x.complete(x.estimateWithoutUsage(0), SourceEstimated, ResultEstimated)
	}
	x.Settle()
}

// complete prices the usage, records the outcome and fixes the charge the
// settle will make. It runs once per exchange.
func (x *Exchange) complete(u accounting.Usage, source Source, result Result) {
	x.phase = phaseDone
	x.priceServed()
	// The usage's service tier (as the response reports it) and its total
	// input (a long-context tier) choose the rates within the price.
	cost := x.price.Cost(u)
	x.outcome = &Outcome{
		Dialect: x.dialect.Name(), Tenant: x.tenant, TenantLabel: x.cfg.TenantLabel(x.tenant), Policy: x.policy.Name,
		RequestedModel: x.requestedModel, Model: x.model, ModelLabel: x.modelLabel,
		Result: result, Decision: x.decisionTag,
		Metered: true, Usage: u, Cost: cost, Source: source, UsageMissing: result == ResultUsageMissing,
		Unpriced: x.unpriced, Latency: x.since(),
	}
	// The charge is fixed before the observer runs: if it fails, the settle
	// that follows still charges what was metered.
	x.charge = limiter.Charge{Tokens: u.RateLimitedTokens(), Cost: int64(cost.Total)}
	x.g.obs.Outcome(x.outcome)
}

// priceServed prices the response by the model it says served it when that
// is a dated snapshot of the model forwarded (OpenAI answers "gpt-4o" as
// "gpt-4o-2024-08-06") with its own price, in force at pricedAt like the
// estimate's (accounting.PriceTable.PricingModel). The metric label stays
// the forwarded model's canonical name, so a model's series do not split by
// the snapshot the provider happened to route to — unless the forwarded
// model has no price, when the snapshot's name replaces "other".
func (x *Exchange) priceServed() {
	served := x.served
	if x.parser != nil {
		served = x.parser.Model()
	}
	m := x.cfg.Prices.PricingModel(x.model, served)
	if m == x.model {
		return
	}
	if p, canonical, known := x.cfg.Prices.Lookup(m, x.pricedAt); known {
		if x.unpriced {
			// Only the snapshot is priced: its name is the bounded label.
			x.modelLabel = canonical
		}
		x.price, x.unpriced = p, false
	}
}

// Settle replaces the reservation with the real cost in one round trip, on
// a context detached from the (possibly cancelled) stream. The adapter calls
// it once the final answer is sent, so the round trip is not on the
// response's latency. Nothing happens before the exchange is done, without a
// reservation, or the second time. A miss's complete answer is then stored
// in the response cache (fillCache, once), off the client's path too.
func (x *Exchange) Settle() {
	if x == nil || x.phase != phaseDone {
		return
	}
	// After the settle: the charge is what matters first.
	defer x.fillCache()
	if x.reservation == nil || x.reservation.Ended() {
		return
	}
	g := x.g
	ctx, cancel := g.detached(x.ctx)
	defer cancel()
	start := g.opts.Now()
	res, ok, err := x.reservation.Settle(ctx, x.charge)
	if !ok {
		return
	}
	g.obs.StoreCall("settle", g.opts.Now().Sub(start), err)
	if err != nil {
		if n, ok := g.settles.Allow(g.opts.Now()); ok {
			g.log.Error("settle failed; the reservation stays charged at its estimate until it expires",
				"tenant", x.tenant, "request_id", x.clientReqID, "err", err, "suppressed_since_last", n)
		}
		return
	}
	x.recordExpired(res.Expired)
	x.observeBudgets(res.Budgets)
	x.recordCrossings(res.Crossed)
}

// recordExpired reports reservations that expired unsettled (a replica died
// mid-request) and were charged at their estimate by this call.
func (x *Exchange) recordExpired(exp []limiter.Expired) {
	for _, e := range exp {
		model := e.Model
		if model == "" {
			model = accounting.OtherModel
		}
		x.g.obs.ExpiredCharged(x.cfg.TenantLabel(e.Tenant), model, accounting.NanoUSD(e.Cost))
		x.g.log.Warn("reservation expired unsettled; charged at its estimate", "tenant", e.Tenant, "reservation", e.RequestID, "cost_usd", accounting.NanoUSD(e.Cost).USD())
	}
}

func (x *Exchange) recordCrossings(crossed []limiter.Crossing) {
	for _, c := range crossed {
		ratio := 1.0
		if c.Cap > 0 {
			ratio = float64(c.Threshold) / float64(c.Cap)
		}
		x.g.obs.BudgetCrossed(x.cfg.TenantLabel(x.tenant), c.Budget, ratio)
		x.g.log.Warn("budget threshold crossed",
			"event", "budget_alert", "tenant", x.tenant, "window", c.Budget,
			"window_start", c.Window.Start, "window_end", c.Window.End,
			"threshold", ratio, "spent_usd", accounting.NanoUSD(c.Spent).USD(), "cap_usd", accounting.NanoUSD(c.Cap).USD(),
			"percent_used", 100*float64(c.Spent)/float64(max(c.Cap, 1)))
	}
}

// observeBudgets remembers every tenant's use for model downgrades and
// publishes the windows of configured tenants (others would share one
// meaningless series).
func (x *Exchange) observeBudgets(states []limiter.BudgetState) {
	// A local decision's windows are the replica's own, started from zero
	// while the shared store is down (limiter.Resilient): not the tenant's
	// spend, for the downgrade cache or the gauges.
	if len(states) == 0 || x.decision.Degraded && x.policy.OnFailure != limiter.FailOpen {
		return
	}
	x.g.budgets.store(x.tenant, states)
	if label := x.cfg.TenantLabel(x.tenant); label != policy.OtherLabel {
		x.g.obs.Budgets(label, states, x.g.opts.Now())
	}
}
