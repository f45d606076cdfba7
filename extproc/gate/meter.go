package gate

import (
	"bytes"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect"
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
	if o, ok := x.g.obs.(QueueObserver); ok && !x.forwardedAt.IsZero() {
		o.ProviderHeaders(x.policyName(), x.laneName(), x.since())
	}
	x.upstreamResponse(h)

	if x.oa.kind == oaUpload || x.oa.kind == oaPoll {
		return x.openaiBatchResponse(endOfStream) // batch_openai.go
	}
	var v ResponseVerdict
	x.rateLimitHeaders(&v.Edits)
	if x.rewriteReason != "" {
		v.Edits.set(contract.ModelRewrittenHeader, x.requestedModel+" -> "+x.model)
	}
	x.cacheResponseHeaders(h, &v.Edits)
	if x.clamped > 0 {
		v.Edits.set(contract.OutputClampedHeader, strconv.FormatInt(x.clamped, 10))
	}
	if x.status < 200 || x.status > 299 {
		// Providers do not bill failed requests; the reservation is released
		// in full and the error body is not worth reading.
		x.complete(accounting.Usage{}, SourceMeasured, ResultUpstreamError)
		v.SkipBody, v.Done = true, true
		return v
	}
	switch {
	case x.batch && endOfStream:
		x.batchCreated()
		v.Done = true
		return v
	case x.batch:
		return v // the answer names the batch: read whole (batchCreateChunk)
	case x.b.resultsID != "":
		x.batchResultsHeaders(h)
		v.Stream = true // JSONL, read line by line as it passes
		return v
	}
	if endOfStream {
		x.complete(x.estimateWithoutUsage(0), SourceEstimated, ResultUsageMissing)
		v.Done = true
		return v
	}
	ct, _ := h.Get("content-type")
	sse := isEventStream(ct)
	if sse {
		x.parser = x.dialect.NewStreamParser()
		// Usage arrives at the end of a stream the client reads as it goes:
		// each chunk is answered at once, never held whole. Envoy keeps a
		// content-length the mode switch makes wrong, so it goes.
		v.Stream = true
		v.Edits.remove("content-length")
		x.coding.rewriter = x.newRewriter()
	}
	ce, _ := h.Get("content-encoding")
	x.coding.start(x, ce, sse, &v.Edits)
	return v
}

// newRewriter returns the rewriter that gives the client back the stream
// tokenwarden's edits changed (OpenAI's forced usage chunk), or nil.
func (x *Exchange) newRewriter() wire.StreamRewriter {
	if rw, ok := x.dialect.(dialect.StreamRewriting); ok {
		return rw.NewStreamRewriter(x.coding.edits)
	}
	return nil
}

// respCoding is how one response body reaches the meter and the client:
// through a Decoder when it is compressed, and through a rewriter when
// tokenwarden's own edits added to it.
//
// Decoding is done here, in the processor, for every coding, and the
// provider is not asked for identity in general, by measurement
// (extproc/dialect/wire BenchmarkDecodePerMB and friends, on a quiet 2-core
// Xeon, per decoded MB of an Anthropic stream): gzip 0.8 ms (1.5 ms
// flushed after every event, as Anthropic sends it), deflate 1.1 (1.8),
// raw deflate 0.8 (1.3), br 0.6 (7.3, brotli allocates per flushed
// metablock), zstd 0.3 (1.6), next to 2.9 ms to parse the same MB. One
// gzip-flushed event costs about 0.36 us to decode on top of 0.33 us to
// parse it; a pooled decoder 1.3-3 us to set up. That is cheaper than what
// forcing accept-encoding: identity costs: the client no longer receives
// what the provider would have sent it, every response crosses the
// upstream link 7-25 times larger, and a provider may ignore the header
// anyway, so decoding would be needed regardless. Only where the client
// receives identity bytes whatever the provider sends — a stream
// tokenwarden rewrites — is identity asked for (Body).
type respCoding struct {
	// edits is what the request's edits did, for the rewriter.
	edits wire.EditReport
	// undecodable names a content coding no Decoder undoes; failed is why
	// decoding stopped. Either way the body goes on to the client as the
	// provider sent it (or, when rewritten, stops) and is charged at the
	// request's estimate.
	undecodable string
	failed      error
	decoder     *wire.Decoder
	rewriter    wire.StreamRewriter
	// sink is consume, bound once; out collects the rewritten bytes of the
	// chunk being answered.
	sink func([]byte)
	out  []byte
}

// start reads the response's content coding at its headers.
func (c *respCoding) start(x *Exchange, contentEncoding string, sse bool, edits *HeaderEdits) {
	c.sink = x.consume
	enc, ok := wire.ParseContentEncoding(contentEncoding)
	switch {
	case !ok:
		// The stream cannot be read, so it cannot be rewritten either: the
		// client gets the provider's bytes as they are.
		c.undecodable, c.rewriter = contentEncoding, nil
		x.logUndecodable(contentEncoding, nil)
	case enc != wire.Identity:
		limit := int64(maxResponseJSON)
		if sse {
			limit = wire.MaxDecodedStream
		}
		c.decoder = wire.NewDecoder(enc, wire.DecodeLimits{MaxOutput: limit})
		if c.rewriter != nil {
			// The client receives the decoded, rewritten stream: its
			// coding goes with the compressed bytes (content-length went
			// with the switch to STREAMED).
			edits.remove("content-encoding")
		}
	}
}

// unreadable reports a body the meter cannot read.
func (c *respCoding) unreadable() bool { return c.undecodable != "" || c.failed != nil }

// write meters one chunk as received: decoded when compressed.
func (x *Exchange) write(chunk []byte) {
	c := &x.coding
	switch {
	case c.unreadable():
	case c.decoder != nil:
		if err := c.decoder.Write(chunk, c.sink); err != nil {
			x.decodeFailed(err)
		}
	default:
		x.consume(chunk)
	}
}

// end flushes the decoder and the rewriter at the end of the body.
func (x *Exchange) end() {
	c := &x.coding
	if c.decoder != nil && !c.unreadable() {
		if err := c.decoder.Finish(c.sink); err != nil {
			x.decodeFailed(err)
		}
	}
	if c.rewriter != nil {
		c.out = c.rewriter.Flush(c.out)
	}
}

// consume takes the body's plain bytes: the stream parser or the JSON kept
// for its usage read them as the provider sent them, and the rewriter
// turns them into the client's.
func (x *Exchange) consume(b []byte) {
	if x.parser != nil {
		x.parser.Write(b)
	} else if len(x.respBody)+len(b) <= maxResponseJSON {
		x.respBody = append(x.respBody, b...)
	}
	if x.coding.rewriter != nil {
		x.coding.out = x.coding.rewriter.Rewrite(x.coding.out, b)
	}
}

func (x *Exchange) decodeFailed(err error) {
	c := &x.coding
	c.failed = err
	c.decoder.Close()
	x.logUndecodable(c.decoder.Encoding().String(), err)
}

// logUndecodable says, sampled, that a response is charged at its estimate
// because its body could not be read.
func (x *Exchange) logUndecodable(coding string, err error) {
	if n, ok := x.g.decodeLog.Allow(x.g.opts.Now()); ok {
		x.g.log.Warn("response body cannot be read; charged at the estimate", "dialect", x.dialect.Name(), "model", x.model,
			"content_encoding", coding, "err", err, "suppressed_since_last", n)
	}
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
		// metered as a 200 whose framing the first bytes tell (and so
		// taken for uncompressed).
		x.phase = phaseResponse
		x.status = 200
		x.coding.sink = x.consume
		if looksLikeSSE(chunk) {
			x.parser = x.dialect.NewStreamParser()
			x.coding.rewriter = x.newRewriter()
		}
	}
	if x.phase != phaseResponse {
		return ChunkVerdict{}
	}
	switch {
	case x.oa.kind == oaUpload || x.oa.kind == oaPoll:
		return x.openaiBatchChunk(chunk, endOfStream)
	case x.batch:
		return x.batchCreateChunk(chunk, endOfStream)
	case x.b.resultsID != "":
		return x.batchResultsChunk(chunk, endOfStream)
	}
	x.write(chunk)
	if endOfStream {
		x.end()
	}
	var v ChunkVerdict
	if x.coding.rewriter != nil {
		// Every chunk is answered with its rewritten bytes, possibly none
		// (the usage chunk, or an event still incomplete).
		v.Replace, v.Body = true, x.coding.out
		x.coding.out = nil
		// The cache keeps what the client received.
		x.cacheChunk(v.Body, endOfStream)
	} else {
		x.cacheChunk(chunk, endOfStream)
	}
	if !endOfStream {
		return v
	}
	x.finalUsage()
	v.Done = true
	return v
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
	switch {
	case x.oa.kind == oaUpload || x.oa.kind == oaPoll:
		x.openaiBatchChunk(nil, true)
		return true
	case x.batch:
		x.batchCreateChunk(nil, true)
		return true
	case x.b.resultsID != "":
		x.batchResultsChunk(nil, true)
		return true
	}
	x.cacheChunk(nil, true)
	x.finalUsage()
	return true
}

// finalUsage meters a response that reached its end.
func (x *Exchange) finalUsage() {
	if x.coding.unreadable() {
		// Nothing in the body can be trusted, or read at all: the charge is
		// what admission reserved, never zero.
		x.complete(x.estimate, SourceEstimated, ResultUsageMissing)
		return
	}
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
	if x == nil || x.batchAbort() {
		return
	}
	x.paceRelease()
	switch x.phase {
	case phaseForwarded, phaseResponse:
		if x.coding.unreadable() {
			x.complete(x.estimate, SourceEstimated, ResultEstimated)
			break
		}
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
	if x.coding.decoder != nil {
		// However the response ended, its decoder's coroutine ends here.
		x.coding.decoder.Close()
	}
	x.priceServed()
	// The usage's service tier (as the response reports it) and its total
	// input (a long-context tier) choose the rates within the price.
	cost := x.price.Cost(u)
	x.outcome = &Outcome{
		Dialect: x.dialect.Name(), Tenant: x.tenant, TenantLabel: x.cfg.TenantLabel(x.tenant), Policy: x.policy.Name,
		RequestedModel: x.requestedModel, Model: x.model, ModelLabel: x.modelLabel,
		Result: result, Decision: x.decisionTag,
		Metered: true, Usage: u, Cost: cost, Source: source, UsageMissing: result == ResultUsageMissing,
		Unpriced: x.unpriced, Latency: x.since(), OutputClamped: x.clamped,
	}
	// The charge is fixed before the observer runs: if it fails, the settle
	// that follows still charges what was metered.
	x.charge = limiter.Charge{Tokens: u.RateLimitedTokens(), Cost: int64(cost.Total)}
	if source == SourceMeasured && result == ResultOK {
		x.charge.Calibrate = x.calibrationSample(u.TotalInputTokens())
		if c := x.charge.Calibrate; c.Model != "" {
			x.g.obs.InputEstimate(c.Model, x.estimate.InputTokens, c.Measured)
		}
	}
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
	x.paceRelease()
	if x.oa.kind == oaPoll {
		if x.outcome != nil && !x.oa.settled {
			x.oa.settled = true
			x.settleOpenAIBatch()
		}
		return
	}
	if x.b.resultsID != "" {
		if x.outcome != nil && !x.b.settled {
			x.b.settled = true
			x.settleBatch()
		}
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
	// The slot is given back: requests of the line waiting for one try now.
	defer g.queue.released(x)
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
	if c := res.Calibration; c.Factor > 0 {
		g.calib.store(x.tenant, c)
		g.obs.EstimatorFactor(c.Model, c.Ratio())
	}
}

// recordExpired reports reservations that expired unsettled (a replica died
// mid-request) and were charged at their estimate by this call.
func (x *Exchange) recordExpired(exp []limiter.Expired) {
	for _, e := range exp {
		model := e.Model
		if model == "" {
			model = accounting.OtherModel
		}
		if d := batchOfReservation(e.RequestID); d != "" {
			x.g.obs.BatchExpired(x.cfg.TenantLabel(e.Tenant), model, d, accounting.NanoUSD(e.Cost))
			x.countBatch(e.Tenant, BatchSettled, d, e.Cost)
		} else {
			x.g.obs.ExpiredCharged(x.cfg.TenantLabel(e.Tenant), model, accounting.NanoUSD(e.Cost))
		}
		x.g.log.Warn("reservation expired unsettled; charged at its estimate", "tenant", e.Tenant, "reservation", e.RequestID, "cost_usd", accounting.NanoUSD(e.Cost).USD())
	}
}

func (x *Exchange) recordCrossings(crossed []limiter.Crossing) {
	for _, c := range crossed {
		ratio := 1.0
		if c.Cap > 0 {
			ratio = float64(c.Threshold) / float64(c.Cap)
		}
		lvl, window := x.budgetLevel(c.Level, c.Budget)
		x.g.obs.BudgetCrossed(x.cfg.TenantLabel(x.tenant), lvl, window, ratio)
		x.g.log.Warn("budget threshold crossed",
			"event", "budget_alert", "tenant", x.tenant, "level", lvl.Level, "level_name", lvl.Name, "level_key", c.Level,
			"window", window, "window_start", c.Window.Start, "window_end", c.Window.End,
			"threshold", ratio, "spent_usd", accounting.NanoUSD(c.Spent).USD(), "cap_usd", accounting.NanoUSD(c.Cap).USD(),
			"percent_used", 100*float64(c.Spent)/float64(max(c.Cap, 1)))
	}
}

// budgetLevel names the level of a store budget name for metrics, and its
// window kind. key is the level key the store reported with the name
// (BudgetState.Level, Crossing.Level): unescaping it again from the name
// cost allocations on every admit and settle.
func (x *Exchange) budgetLevel(key, name string) (BudgetLevel, string) {
	window := name
	if i := strings.IndexByte(name, '/'); i >= 0 {
		window = name[i+1:]
	}
	return BudgetLevel{Level: policy.LevelOfKey(key).String(), Name: x.cfg.LevelLabel(x.tenant, key)}, window
}

// observeBudgets remembers every org's use per level for model downgrades
// and publishes the windows of configured orgs (others would share one
// meaningless series), each under its level and the level's bounded name.
func (x *Exchange) observeBudgets(states []limiter.BudgetState) {
	// A local decision's windows are the replica's own, started from zero
	// while the shared store is down (limiter.Resilient): not the tenant's
	// spend, for the downgrade cache or the gauges.
	if len(states) == 0 || x.decision.Degraded && x.policy.OnFailure != limiter.FailOpen {
		return
	}
	if x.cfg.ReadsBudgetUse() {
		// Only a downgrade rule reads it; with none, keeping it was 3% of
		// the processor's CPU in the small-JSON load (pprof).
		x.g.budgets.store(x.tenant, states)
	}
	label := x.cfg.TenantLabel(x.tenant)
	if label == policy.OtherLabel {
		return
	}
	// A pooled buffer: the observer reads it during the call only
	// (Observer.Budgets), and one kept by the exchange (1.3 KB at four
	// levels) would be held by every slow stream to its end.
	buf := levelBudgetBufs.Get().(*[]LevelBudget)
	bs := slices.Grow((*buf)[:0], len(states))[:len(states)]
	for i, s := range states {
		lvl, window := x.budgetLevel(s.Level, s.Name)
		bs[i] = LevelBudget{BudgetLevel: lvl, Window: window, State: s}
	}
	x.g.obs.Budgets(label, bs, x.g.opts.Now())
	clear(bs) // the states' strings are not the pool's to keep alive
	*buf = bs[:0]
	levelBudgetBufs.Put(buf)
}

// levelBudgetBufs are observeBudgets' buffers.
var levelBudgetBufs = sync.Pool{New: func() any { return new([]LevelBudget) }}
