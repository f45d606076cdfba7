package extproc

import (
	"errors"
	"fmt"
	"math"
	"path"
	"strconv"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// admitRequest parses the request body once, resolves the model, estimates
// the cost, edits the body, and admits or rejects — all before Envoy forwards
// a byte upstream.
func (x *exchange) admitRequest(body []byte) *extprocv3.ProcessingResponse {
	m := x.s.opts.Metrics
	req, err := x.dialect.parse(body)
	if err != nil {
		return x.reject(400, errInvalidRequest, "", "tokenwarden: "+err.Error(), outcomeInvalidRequest, nil)
	}
	x.req = req
	x.requestedModel = req.Model

	model, reason, err := x.resolveModel(req.Model)
	if err != nil {
		return x.reject(400, errInvalidRequest, "", "tokenwarden: "+err.Error(), outcomeInvalidRequest, nil)
	}
	x.model, x.rewriteReason = model, reason
	var canonical string
	var known bool
	x.price, canonical, known = x.cfg.Prices.Lookup(model)
	x.modelLabel = policy.OtherLabel
	if known {
		x.modelLabel = canonical
	}
	x.parsed = true

	// The reservation: the input estimate plus the output the request may
	// produce, capped by the policy so a huge max_tokens does not pin a budget.
	out := x.policy.OutputReservation
	if req.MaxTokens > 0 && req.MaxTokens < out {
		out = req.MaxTokens
	}
	x.estimate = accounting.Usage{InputTokens: req.InputTokens, OutputTokens: out}
	x.estimateCost = x.price.Cost(x.estimate).Total

	newBody, changed := body, false
	if model != req.Model {
		if newBody, err = x.dialect.setModel(newBody, model); err != nil {
			return x.reject(400, errInvalidRequest, "", "tokenwarden: "+err.Error(), outcomeInvalidRequest, nil)
		}
		changed = true
		m.ModelRewrites.WithLabelValues(x.policy.Name, reason).Inc()
	}
	prepared, ch, err := x.dialect.prepare(newBody, &req)
	if err != nil {
		return x.reject(400, errInvalidRequest, "", "tokenwarden: "+err.Error(), outcomeInvalidRequest, nil)
	}
	newBody, changed = prepared, changed || ch
	if pc := x.policy.PromptCache; pc.Inject {
		injected, ch, err := x.dialect.injectCache(newBody, model, pc)
		if err != nil {
			// The body already parsed; a failure here is tokenwarden's, and the
			// request is better sent without breakpoints than refused.
			x.s.log.Error("prompt-cache injection failed; forwarding without it", "policy", x.policy.Name, "err", err)
		} else if ch {
			newBody, changed = injected, true
		}
	}
	x.s.prefixes.observe(x, body)

	if x.policy.Enforces() {
		if resp := x.admit(); resp != nil {
			return resp
		}
	} else {
		x.decisionTag = "allowed"
	}
	x.forwardedAt = time.Now()

	edits := &headerEdits{}
	if changed {
		// BUFFERED with request headers SEND keeps content-length, and Envoy
		// rejects a body whose length differs from it (reference §3.5).
		edits.Set("content-length", strconv.Itoa(len(newBody)))
	}
	// The resolved model, always, so envoy.yaml can route by model whether or
	// not tokenwarden rewrote it; the route is picked again with it.
	edits.Set(modelHeader, model)
	if x.streamedRequest {
		// Every earlier chunk was cleared; this answer carries the whole body.
		changed = true
	}
	return requestBodyResponse(common(edits, newBody, changed, true))
}

// resolveModel applies the policy's model rules: alias, size tiers, the
// allow list, then graduated downgrade by budget use. reason is "" when the model is the
// one the client asked for.
func (x *exchange) resolveModel(requested string) (model, reason string, err error) {
	mp := &x.policy.Models
	model = requested
	if to, ok := mp.Aliases[requested]; ok {
		model, reason = to, "alias"
	}
	for _, t := range mp.Tiers {
		if t.From != "" {
			if ok, _ := path.Match(t.From, model); !ok {
				continue
			}
		}
		in := x.req.InputTokens
		if t.MinInputTokens > 0 && in < t.MinInputTokens || t.MaxInputTokens > 0 && in > t.MaxInputTokens {
			continue
		}
		if t.MaxOutput > 0 && x.req.MaxTokens > t.MaxOutput {
			continue
		}
		if t.Tools != nil && *t.Tools != x.req.HasTools {
			continue
		}
		if t.Model != model {
			model, reason = t.Model, "tier"
		}
		break
	}
	// The allow list judges what the client would get — after its alias and
	// size tier, which are the operator's own choices — but before a budget
	// downgrade, which is the operator's too and may leave the list.
	if !mp.Allowed(model) {
		return "", "", fmt.Errorf("model %q is not allowed by policy %q", requested, x.policy.Name)
	}
	if len(mp.Downgrade) > 0 {
		used := x.s.budgets.used(x.tenant)
		for _, d := range mp.Downgrade { // highest threshold first
			if ok, _ := path.Match(d.From, model); !ok {
				continue
			}
			if used.ratio(d.Window) >= d.WhenBudgetUsed {
				model, reason = d.To, "downgrade"
				break
			}
		}
	}
	return model, reason, nil
}

// admit runs the one admission round trip. It returns nil when the request
// may go on, or the local reply that ends it.
func (x *exchange) admit() *extprocv3.ProcessingResponse {
	s := x.s
	m := s.opts.Metrics
	tenantLabel := x.cfg.TenantLabel(x.tenant)
	start := time.Now()
	d, err := s.opts.Store.Admit(x.ctx, limiter.AdmitRequest{
		Tenant:    x.tenant,
		RequestID: x.requestID,
		Model:     x.modelLabel,
		Limits:    x.policy.Limits,
		Tokens:    x.estimate.RateLimitedTokens(),
		Cost:      int64(x.estimateCost),
		Budgets:   x.policy.LimiterBudgets(s.opts.Now()),
		OnFailure: limiter.FailurePolicy(x.policy.OnFailure),
	})
	m.StoreSeconds.WithLabelValues("admit").Observe(time.Since(start).Seconds())
	if errors.Is(err, limiter.ErrInvalid) {
		// Not an outage: the store refused what tokenwarden asked (a value
		// outside its bounds). That is tokenwarden's bug, not the client's.
		m.StoreErrors.WithLabelValues("admit").Inc()
		s.log.Error("the store rejected an admission as invalid", "tenant", x.tenant, "policy", x.policy.Name, "err", err)
		return x.reject(500, errInternal, "", "tokenwarden: the request could not be admitted: "+err.Error(), outcomeStoreError, nil)
	}
	if err != nil {
		m.StoreErrors.WithLabelValues("admit").Inc()
		m.Admissions.WithLabelValues(tenantLabel, "failed_closed").Inc()
		s.log.Error("admission store failed; policy fails closed", "tenant", x.tenant, "policy", x.policy.Name, "err", err)
		x.decisionTag = "failed_closed"
		return x.reject(503, errUnavailable, "", "tokenwarden: the limits store is unavailable and this policy fails closed; retry shortly", outcomeStoreError, &headerEdits{})
	}
	x.decision = d
	s.recordExpired(d.Expired)
	s.recordCrossings(x, x.tenant, d.Crossed)
	s.observeBudgets(x.cfg, x.tenant, d.Budgets)
	if !d.Allowed {
		dim := string(d.Denied)
		m.Admissions.WithLabelValues(tenantLabel, "denied_"+dim).Inc()
		x.decisionTag = "denied_" + dim
		return x.deny(d)
	}
	x.admitted = true
	switch {
	case d.Degraded && x.policy.OnFailure == policy.FailOpen:
		x.decisionTag = "failed_open"
	case d.Degraded:
		x.decisionTag = "local"
	default:
		x.decisionTag = "allowed"
	}
	m.Admissions.WithLabelValues(tenantLabel, x.decisionTag).Inc()
	return nil
}

// deny builds the 429: the dialect's error body, exact retry hints, the
// tenant's x-ratelimit-* and which dimension refused.
func (x *exchange) deny(d limiter.Decision) *extprocv3.ProcessingResponse {
	dim := string(d.Denied)
	h := &headerEdits{}
	x.rateLimitHeaders(h)
	retry := d.RetryAfter
	secs := int64(math.Ceil(retry.Seconds()))
	if secs < 1 {
		secs = 1
	}
	h.Set("retry-after", strconv.FormatInt(secs, 10))
	h.Set("retry-after-ms", strconv.FormatInt(max(retry.Milliseconds(), 1), 10))
	h.Set("x-tokenwarden-denied", dim)
	// SDKs retry 429s within seconds; when waiting is longer than a minute (a
	// budget window, or a request that can never fit) a retry is pointless.
	if retry > time.Minute || d.NeverFits {
		h.Set("x-should-retry", "false")
	}
	kind, msg := errRateLimited, ""
	switch d.Denied {
	case limiter.DimensionRequests:
		msg = fmt.Sprintf("tokenwarden: tenant %q is over its limit of %d requests per minute; retry in %ds", x.tenant, x.policy.Limits.RequestsPerMinute, secs)
	case limiter.DimensionTokens:
		msg = fmt.Sprintf("tokenwarden: tenant %q is over its limit of %d tokens per minute (this request reserves %d); retry in %ds", x.tenant, x.policy.Limits.TokensPerMinute, x.estimate.RateLimitedTokens(), secs)
		if d.NeverFits {
			msg = fmt.Sprintf("tokenwarden: this request reserves %d tokens, more than tenant %q may use in a minute (%d); reduce the prompt or max_tokens", x.estimate.RateLimitedTokens(), x.tenant, x.policy.Limits.TokensPerMinute)
		}
	case limiter.DimensionConcurrency:
		msg = fmt.Sprintf("tokenwarden: tenant %q already has %d requests in flight, its limit", x.tenant, x.policy.Limits.Concurrent)
	default:
		kind = errBudget
		window := dim[len("budget_"):]
		msg = fmt.Sprintf("tokenwarden: tenant %q has exhausted its %s budget; it resets in %s", x.tenant, window, retry.Round(time.Second))
	}
	return x.reject(429, kind, dim, msg, outcomeDenied, h)
}

// reject ends the request with a local reply in the dialect's error format.
func (x *exchange) reject(code int, kind errorKind, dimension, msg, outcome string, h *headerEdits) *extprocv3.ProcessingResponse {
	x.finished = true
	model := x.modelLabel
	if model == "" {
		model = policy.OtherLabel
	}
	x.s.opts.Metrics.Requests.WithLabelValues(x.dialect.name(), model, outcome).Inc()
	if x.decisionTag == "none" {
		x.decisionTag = outcome
	}
	resp := immediate(code, h, x.dialect.errorBody(kind, dimension, msg), "tokenwarden_"+outcome)
	return withMetadata(resp, map[string]*structpb.Value{
		"tenant":          structpb.NewStringValue(x.tenant),
		"policy":          structpb.NewStringValue(x.policyName()),
		"requested_model": structpb.NewStringValue(x.requestedModel),
		"model":           structpb.NewStringValue(x.model),
		"decision":        structpb.NewStringValue(x.decisionTag),
	})
}

func (x *exchange) policyName() string {
	if x.policy == nil {
		return ""
	}
	return x.policy.Name
}

// rateLimitHeaders adds the tenant's limits in OpenAI's header convention
// (Go-duration resets), which both OpenAI and Anthropic clients understand.
func (x *exchange) rateLimitHeaders(h *headerEdits) {
	d := x.decision
	if d.Requests.Limit > 0 {
		h.Set("x-ratelimit-limit-requests", strconv.FormatInt(d.Requests.Limit, 10))
		h.Set("x-ratelimit-remaining-requests", strconv.FormatInt(d.Requests.Remaining, 10))
		h.Set("x-ratelimit-reset-requests", d.Requests.Reset.Round(time.Millisecond).String())
	}
	if d.Tokens.Limit > 0 {
		h.Set("x-ratelimit-limit-tokens", strconv.FormatInt(d.Tokens.Limit, 10))
		h.Set("x-ratelimit-remaining-tokens", strconv.FormatInt(d.Tokens.Remaining, 10))
		h.Set("x-ratelimit-reset-tokens", d.Tokens.Reset.Round(time.Millisecond).String())
	}
}
