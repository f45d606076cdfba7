package extproc

import (
	"strconv"
	"strings"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// Usage sources, the values of tokenwarden_spend_usd_total{source} and of
// the usage_source metadata key.
const (
	sourceMeasured  = "measured"
	sourceEstimated = "estimated"
)

func (x *exchange) onResponseHeaders(h *extprocv3.HttpHeaders) (*extprocv3.ProcessingResponse, func()) {
	if x.passThrough || !x.parsed || x.finished {
		return responseHeadersResponse(nil, nil), nil
	}
	var contentType string
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch hv.Key {
		case ":status":
			x.status, _ = strconv.Atoi(headerValue(hv))
		case "content-type":
			contentType = headerValue(hv)
		}
	}
	x.s.opts.Metrics.ProviderStatus.WithLabelValues(x.dialect.name(), statusLabel(x.status)).Inc()

	edits := &headerEdits{}
	x.rateLimitHeaders(edits)
	if x.rewriteReason != "" {
		edits.Set("x-tokenwarden-model-rewritten", x.requestedModel+" -> "+x.model)
	}
	if x.status < 200 || x.status > 299 {
		// Providers do not bill failed requests; the reservation is released
		// in full and the error body is not worth a round trip per chunk.
		f := x.complete(accounting.Usage{}, sourceMeasured, outcomeUpstreamError)
		return withMetadata(responseHeadersResponse(common(edits, nil, false, false), noResponseBodyMode), f.metadata), f.settle
	}
	if h.GetEndOfStream() {
		f := x.complete(x.estimateWithoutUsage(0), sourceEstimated, outcomeUsageMissing)
		return withMetadata(responseHeadersResponse(common(edits, nil, false, false), nil), f.metadata), f.settle
	}
	var mode *filterv3.ProcessingMode
	if strings.HasPrefix(strings.TrimSpace(strings.ToLower(contentType)), "text/event-stream") {
		x.parser = x.dialect.newStreamParser()
		// Usage arrives at the end of a stream the client reads as it goes:
		// each chunk is answered at once (STREAMED), never held whole.
		// Envoy does not strip content-length after a response-time override,
		// so it is removed here (reference §2.4).
		mode = streamedResponseMode
		edits.Remove("content-length")
	}
	return responseHeadersResponse(common(edits, nil, false, false), mode), nil
}

func (x *exchange) onResponseBody(b *extprocv3.HttpBody) (*extprocv3.ProcessingResponse, func()) {
	if x.passThrough || !x.parsed || x.finished {
		return responseBodyResponse(nil), nil
	}
	if x.parser != nil {
		x.parser.Write(b.GetBody())
	} else if len(x.respBody)+len(b.GetBody()) <= maxResponseJSON {
		x.respBody = append(x.respBody, b.GetBody()...)
	}
	if !b.GetEndOfStream() {
		return responseBodyResponse(nil), nil
	}
	f := x.finalUsage()
	return withMetadata(responseBodyResponse(nil), f.metadata), f.settle
}

// finalUsage meters a response that reached its end.
func (x *exchange) finalUsage() finalized {
	if x.parser != nil {
		u, final := x.parser.Usage()
		if final {
			return x.complete(u, sourceMeasured, outcomeOK)
		}
		outcome := outcomeUsageMissing
		if _, _, isErr := x.parser.Error(); isErr {
			outcome = outcomeUpstreamError
		}
		return x.complete(x.estimateFromStream(u), sourceEstimated, outcome)
	}
	if u, ok := x.dialect.usageFromJSON(x.respBody); ok {
		return x.complete(u, sourceMeasured, outcomeOK)
	}
	return x.complete(x.estimateWithoutUsage(wire.EstimateTokens(x.respBody)), sourceEstimated, outcomeUsageMissing)
}

// estimateWithoutUsage is the charge for a request whose response says
// nothing about usage: the input estimate and the given output estimate.
func (x *exchange) estimateWithoutUsage(output int64) accounting.Usage {
	return accounting.Usage{InputTokens: x.estimate.InputTokens, OutputTokens: output}
}

// estimateFromStream is the charge for a stream that ended without final
// usage: whatever the provider already reported (Anthropic's message_start
// carries the input and cache counts), else the request's input estimate,
// and output estimated from the text that was streamed.
func (x *exchange) estimateFromStream(u accounting.Usage) accounting.Usage {
	if u.TotalInputTokens() == 0 {
		u.InputTokens = x.estimate.InputTokens
	}
	if est := (x.parser.OutputTextBytes() + 3) / 4; est > u.OutputTokens {
		u.OutputTokens = est
	}
	return u
}

// finish runs when the stream ends. A request that was admitted but never
// metered — the client went away, the upstream reset, Envoy replied locally —
// is charged from what is known, marked estimated. Never from the stream's
// context: Envoy has cancelled it.
func (x *exchange) finish() {
	if x.finished || x.passThrough || !x.parsed {
		return
	}
	var u accounting.Usage
	if x.parser != nil {
		pu, final := x.parser.Usage()
		if final {
			// The usage arrived but the stream ended before its last chunk.
			f := x.complete(pu, sourceMeasured, outcomeOK)
			f.settle()
			return
		}
		u = x.estimateFromStream(pu)
	} else {
		// No response (or an unfinished JSON body): the provider may well have
		// processed the input, but nothing says how much it generated.
		u = x.estimateWithoutUsage(0)
	}
	f := x.complete(u, sourceEstimated, outcomeEstimated)
	f.settle()
}

// finalized is a metered request: the metadata for the last answer and the
// settle to run once that answer is sent.
type finalized struct {
	metadata map[string]*structpb.Value
	settle   func()
}

// complete prices the usage, counts it, and prepares the settle. It runs at
// most once per request.
func (x *exchange) complete(u accounting.Usage, source, outcome string) finalized {
	x.finished = true
	s := x.s
	m := s.opts.Metrics
	cost := x.price.Cost(u)
	model := x.modelLabel
	m.Requests.WithLabelValues(x.dialect.name(), model, outcome).Inc()
	m.Tokens.WithLabelValues(model, "input").Add(float64(u.InputTokens))
	m.Tokens.WithLabelValues(model, "output").Add(float64(u.OutputTokens))
	m.Tokens.WithLabelValues(model, "cache_read").Add(float64(u.CacheReadTokens))
	m.Tokens.WithLabelValues(model, "cache_write").Add(float64(u.CacheWriteTokens()))
	if u.CacheReadTokens > 0 {
		m.PromptCache.WithLabelValues(model, "read").Add(float64(u.CacheReadTokens))
	}
	if w := u.CacheWriteTokens(); w > 0 {
		m.PromptCache.WithLabelValues(model, "write").Add(float64(w))
	}
	m.Cost.WithLabelValues(model).Add(cost.Total.USD())
	m.Spend.WithLabelValues(x.cfg.TenantLabel(x.tenant), model, source).Add(cost.Total.USD())
	if !x.forwardedAt.IsZero() {
		m.ProviderLatency.WithLabelValues(x.policy.Name).Observe(time.Since(x.forwardedAt).Seconds())
	}
	usageSource := source
	if outcome == outcomeUsageMissing {
		usageSource = "missing"
	}
	md := map[string]*structpb.Value{
		"tenant":             structpb.NewStringValue(x.tenant),
		"policy":             structpb.NewStringValue(x.policy.Name),
		"model":              structpb.NewStringValue(x.model),
		"requested_model":    structpb.NewStringValue(x.requestedModel),
		"input_tokens":       structpb.NewNumberValue(float64(u.InputTokens)),
		"output_tokens":      structpb.NewNumberValue(float64(u.OutputTokens)),
		"cache_read_tokens":  structpb.NewNumberValue(float64(u.CacheReadTokens)),
		"cache_write_tokens": structpb.NewNumberValue(float64(u.CacheWriteTokens())),
		"cost_usd":           structpb.NewNumberValue(cost.Total.USD()),
		"cost_nano_usd":      structpb.NewNumberValue(float64(cost.Total)),
		"usage_source":       structpb.NewStringValue(usageSource),
		"decision":           structpb.NewStringValue(x.decisionTag),
	}
	settle := func() {}
	if x.admitted {
		req := limiter.SettleRequest{
			Tenant:    x.tenant,
			RequestID: x.requestID,
			Tokens:    u.RateLimitedTokens(),
			Cost:      int64(cost.Total),
			Budgets:   x.policy.LimiterBudgets(s.opts.Now()),
		}
		settle = func() { s.settle(x, req) }
	}
	return finalized{metadata: md, settle: settle}
}

// settle replaces the reservation with the real cost in one round trip, on a
// context detached from the (possibly cancelled) stream.
func (s *Server) settle(x *exchange, req limiter.SettleRequest) {
	m := s.opts.Metrics
	ctx, cancel := s.detached(x.ctx)
	defer cancel()
	start := time.Now()
	res, err := s.opts.Store.Settle(ctx, req)
	m.StoreSeconds.WithLabelValues("settle").Observe(time.Since(start).Seconds())
	if err != nil {
		m.StoreErrors.WithLabelValues("settle").Inc()
		s.log.Error("settle failed; the reservation stays charged at its estimate until it expires",
			"tenant", req.Tenant, "request_id", x.clientReqID, "err", err)
		return
	}
	if res.Queued {
		s.log.Info("store unreachable; settle queued until it is back", "tenant", req.Tenant, "request_id", x.clientReqID)
	}
	s.recordExpired(res.Expired)
	s.observeBudgets(x.cfg, req.Tenant, res.Budgets)
	s.recordCrossings(x, req.Tenant, res.Crossed)
}

// recordExpired counts reservations that expired unsettled (a replica died
// mid-request) and were charged at their estimate by this replica's call.
func (s *Server) recordExpired(exp []limiter.Expired) {
	if len(exp) == 0 {
		return
	}
	cfg := s.opts.Config.Load()
	for _, e := range exp {
		model := e.Model
		if model == "" {
			model = "other"
		}
		s.opts.Metrics.Spend.WithLabelValues(cfg.TenantLabel(e.Tenant), model, sourceEstimated).Add(accounting.NanoUSD(e.Cost).USD())
		s.log.Warn("reservation expired unsettled; charged at its estimate", "tenant", e.Tenant, "reservation", e.RequestID, "cost_usd", accounting.NanoUSD(e.Cost).USD())
	}
}

func (s *Server) recordCrossings(x *exchange, tenant string, crossed []limiter.Crossing) {
	for _, c := range crossed {
		ratio := 1.0
		if c.Cap > 0 {
			ratio = float64(c.Threshold) / float64(c.Cap)
		}
		th := strconv.FormatFloat(ratio, 'f', -1, 64)
		s.opts.Metrics.BudgetAlerts.WithLabelValues(x.cfg.TenantLabel(tenant), c.Budget, th).Inc()
		s.log.Warn("budget threshold crossed",
			"event", "budget_alert", "tenant", tenant, "window", c.Budget,
			"window_start", c.Window.Start, "window_end", c.Window.End,
			"threshold", ratio, "spent_usd", accounting.NanoUSD(c.Spent).USD(), "cap_usd", accounting.NanoUSD(c.Cap).USD(),
			"percent_used", 100*float64(c.Spent)/float64(max(c.Cap, 1)))
	}
}
