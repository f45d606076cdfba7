package gate

import (
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// Batch submissions. A batch carries many requests in one body and is
// processed by the provider hours later at batch prices, so it is admitted
// once, on submit, against the caller's budgets at every level: every
// request's input estimate plus its whole max_tokens (a batch request cannot
// be clamped later), at the batch tier's price. The reservation is detached
// — it holds no concurrency slot while the provider works — and lasts the
// policy's batches.reservation_ttl (the provider's 24 hours plus a margin);
// unless settled sooner it is then charged at its estimate. A batch too
// large to estimate within the policy's bound is refused, never waved
// through. Batch work counts one request against requests per minute and
// nothing against tokens per minute: the provider spreads it over a day,
// outside its per-minute limits; the budgets are what bind it.

// BatchDialect is the Outcome.Dialect of a batch submission (the api="batch"
// of the metrics).
const BatchDialect = "anthropic_batch"

// isBatchSubmit reports whether a request creates a Message Batch.
func isBatchSubmit(method, path string) bool {
	p, _, _ := strings.Cut(path, "?")
	return method == "POST" && p == anthropic.BatchPath
}

// batchBody admits a batch submission from its body.
func (x *Exchange) batchBody(body []byte) BodyVerdict {
	if !x.policy.Batches.Allow {
		x.decisionTag = "denied_batch"
		h := HeaderEdits{}
		h.set(contract.DeniedHeader, "policy/batch")
		h.set("x-should-retry", "false")
		return BodyVerdict{Reply: x.reject(403, wire.ErrorForbidden, "batch", "tokenwarden: this route's policy does not allow batches; send the requests one by one", ResultDenied, &h)}
	}
	lines, err := anthropic.ParseBatch(body, x.policy.Batches.MaxRequests)
	if err != nil {
		return BodyVerdict{Reply: x.refuse(err)}
	}
	x.pricedAt = x.g.opts.Now()
	var est accounting.Usage
	var cost accounting.NanoUSD
	for i := range lines {
		req := &lines[i].Request
		if _, _, err := x.resolveModel(req.Model); err != nil {
			return BodyVerdict{Reply: x.refuse(err)}
		}
		price, canonical, known := x.cfg.Prices.Lookup(req.Model, x.pricedAt)
		if !known {
			x.unpriced = true
			x.g.obs.Unconfigured(UnconfiguredModel)
		}
		if i == 0 {
			x.requestedModel, x.model, x.modelLabel = req.Model, req.Model, policy.OtherLabel
			if known {
				x.modelLabel = canonical
			}
		}
		in := calibrated(req.InputTokens, x.g.calib.factor(x.tenant, x.modelLabel))
		u := accounting.Usage{InputTokens: in, OutputTokens: req.MaxTokens, ServiceTier: accounting.TierBatch.String()}
		cost += price.Cost(u).Total
		est.InputTokens += in
		est.OutputTokens += req.MaxTokens
	}
	x.estimate, x.estimateCost = est, cost
	x.phase = phaseForwarded
	if x.enforces() {
		if reply := x.admit(); reply != nil {
			return BodyVerdict{Reply: reply}
		}
	} else {
		x.decisionTag = "allowed"
	}
	x.forwardedAt = x.g.opts.Now()
	return BodyVerdict{Body: body}
}

// batchCreated ends a batch submission the provider accepted: its
// reservation stays in the store, reserved until it is settled or its lease
// ends and it is charged at its estimate.
func (x *Exchange) batchCreated() {
	x.phase = phaseDone
	x.decisionTag = "batch_reserved"
	x.outcome = &Outcome{
		Dialect: BatchDialect, Tenant: x.tenant, TenantLabel: x.cfg.TenantLabel(x.tenant), Policy: x.policyName(),
		RequestedModel: x.requestedModel, Model: x.model, ModelLabel: x.modelLabel, Result: ResultBatchReserved,
		Decision: x.decisionTag, Latency: time.Since(x.forwardedAt),
	}
	x.g.obs.Outcome(x.outcome)
	x.reservation = nil // not this exchange's to settle
}
