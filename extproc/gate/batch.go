package gate

import (
	"bytes"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/openai"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
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

// batchDialect is the Outcome.Dialect of a batch submission.
func (x *Exchange) batchDialect() string {
	if x.oa.kind != oaNone {
		return OpenAIBatchDialect
	}
	return BatchDialect
}

// isBatchSubmit reports whether a request creates a Message Batch.
func isBatchSubmit(method, path string) bool {
	p, _, _ := strings.Cut(path, "?")
	return method == "POST" && p == anthropic.BatchPath
}

// batchBody admits a batch submission from its body.
func (x *Exchange) batchBody(body []byte) BodyVerdict {
	if reply := x.batchesAllowed(); reply != nil {
		return BodyVerdict{Reply: reply}
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
	return x.admitBatch(body)
}

// admitBatch admits a batch whose estimate is set, as one detached
// reservation (either provider's), and forwards its body.
func (x *Exchange) admitBatch(body []byte) BodyVerdict {
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

// batchesAllowed refuses batch work (either provider's) on a policy that
// does not allow it.
func (x *Exchange) batchesAllowed() *Reply {
	if x.policy.Batches.Allow {
		return nil
	}
	x.decisionTag = "denied_batch"
	h := HeaderEdits{}
	h.set(contract.DeniedHeader, "policy/batch")
	h.set("x-should-retry", "false")
	return x.reject(403, wire.ErrorForbidden, "batch", "tokenwarden: this route's policy does not allow batches; send the requests one by one", ResultDenied, &h)
}

// batchCreated ends a batch submission the provider accepted: its
// reservation stays in the store, reserved until it is settled or its lease
// ends and it is charged at its estimate.
func (x *Exchange) batchCreated() {
	x.phase = phaseDone
	x.decisionTag = "batch_reserved"
	x.outcome = &Outcome{
		Dialect: x.batchDialect(), Tenant: x.tenant, TenantLabel: x.cfg.TenantLabel(x.tenant), Policy: x.policyName(),
		RequestedModel: x.requestedModel, Model: x.model, ModelLabel: x.modelLabel, Result: ResultBatchReserved,
		Decision: x.decisionTag, Latency: time.Since(x.forwardedAt),
	}
	x.g.obs.Outcome(x.outcome)
	if x.reservation != nil {
		x.g.obs.BatchReserved(x.outcome.TenantLabel, x.outcome.Dialect, x.estimateCost)
		x.countBatch(x.tenant, BatchReserved, x.outcome.Dialect, int64(x.estimateCost))
	}
	x.reservation = nil // not this exchange's to settle
}

// The rest of a batch's life. The provider names the batch in its answer
// to the creation: the reservation is renamed after it (one more round
// trip, on the answer), so that whichever replica later sees the results
// downloaded — GET /v1/messages/batches/{id}/results, a JSONL file of one
// line per request — settles it, once, to what the succeeded lines used at
// batch prices. A second download finds it settled and changes nothing;
// another org's download cannot reach it (the store key carries the org).
// A download cut short settles nothing; a batch whose results are never
// downloaded is charged at its estimate when its reservation ends.

// batchState is what a batch exchange keeps.
type batchState struct {
	// resultsID is the batch whose results this request downloads.
	resultsID string
	// buf holds the create answer, or a results line not yet complete.
	buf []byte
	// What the results' succeeded lines used, priced at batch prices.
	cost      accounting.Cost
	usage     accounting.Usage
	lines     int
	succeeded int
	// failed: the results could not be read whole; nothing is settled.
	failed bool
	// settled: the settle was tried (once per download).
	settled bool
	model   string
}

const (
	// maxBatchCreateAnswer bounds the create answer kept to read the id.
	maxBatchCreateAnswer = 1 << 20
	// maxBatchResultLine bounds one results line (a whole Message).
	maxBatchResultLine = 16 << 20
)

// batchReservation is the store id a named Message Batch's reservation
// has; openaiBatchReservation an OpenAI batch's. Each names its API, so a
// reservation that expires is reported as the batch it was.
func batchReservation(id string) string       { return "batch:" + id }
func openaiBatchReservation(id string) string { return "openai_batch:" + id }

// BatchLedgerKey is the store counter (limiter.Notes) of an org's batch
// spend in nano-USD by stage (BatchReserved, BatchSettled), batch dialect
// and UTC month ("200601"), which `tokenwarden budgets` reports.
func BatchLedgerKey(stage, dialect string, month time.Time) string {
	return "batchusd:" + stage + ":" + dialect + ":" + month.UTC().Format("200601")
}

// Stages of the batch ledger.
const (
	BatchReserved = "reserved"
	BatchSettled  = "settled"
)

// batchLedgerTTL keeps a month's counters through the next month.
const batchLedgerTTL = 62 * 24 * time.Hour

// countBatch adds to the org's batch ledger; a store without notes keeps
// none, and a failure costs only the report's figure.
func (x *Exchange) countBatch(tenant, stage, dialect string, cost int64) {
	ns := x.notes()
	if ns == nil || cost <= 0 {
		return
	}
	ctx, cancel := x.g.detached(x.ctx)
	defer cancel()
	start := x.g.opts.Now()
	err := ns.AddNoteCount(ctx, tenant, BatchLedgerKey(stage, dialect, start), cost, batchLedgerTTL)
	x.g.obs.StoreCall("note_count", x.g.opts.Now().Sub(start), err)
}

// batchOfReservation is the batch dialect of a reservation id, "" for a
// reservation of one request.
func batchOfReservation(id string) string {
	switch {
	case strings.HasPrefix(id, "batch:"):
		return BatchDialect
	case strings.HasPrefix(id, "openai_batch:"):
		return OpenAIBatchDialect
	}
	return ""
}

// batchCreateChunk keeps the create answer and, at its end, renames the
// reservation after the batch.
func (x *Exchange) batchCreateChunk(chunk []byte, end bool) ChunkVerdict {
	x.b.buf, _ = appendBounded(x.b.buf, chunk, maxBatchCreateAnswer)
	if !end {
		return ChunkVerdict{}
	}
	x.bindBatch()
	return ChunkVerdict{Done: true}
}

// appendBounded appends chunk to an answer kept whole unless it would grow
// past limit; over reports that it did not.
func appendBounded(buf, chunk []byte, limit int) (out []byte, over bool) {
	if len(buf)+len(chunk) > limit {
		return buf, true
	}
	return append(buf, chunk...), false
}

// bindBatch renames the batch's reservation after the id the provider
// gave it; without an id (or a store that cannot rename) the reservation
// keeps its submit id and ends charged at its estimate.
func (x *Exchange) bindBatch() {
	id, ok := anthropic.BatchCreated(x.b.buf)
	if x.oa.kind == oaSubmit {
		st, err := openai.ParseBatchObject(x.b.buf)
		id, ok = st.ID, err == nil
	}
	x.b.buf = nil
	rb, can := x.g.opts.Store.(limiter.Rebinder)
	if ok && can && x.reservation != nil {
		ctx, cancel := x.g.detached(x.ctx)
		to := batchReservation(id)
		if x.oa.kind == oaSubmit {
			to = openaiBatchReservation(id)
		}
		bound, err := rb.Rebind(ctx, limiter.RebindRequest{Tenant: x.tenant, From: x.requestID, To: to})
		cancel()
		if err != nil || !bound {
			x.g.log.Warn("batch reservation kept its submit id; it will be charged at its estimate when it ends", "tenant", x.tenant, "batch", id, "err", err)
		}
		if err == nil && bound && x.oa.kind == oaSubmit {
			x.noteBatch(id) // what its settle needs (batch_openai.go)
		}
	}
	x.batchCreated()
}

// beginBatchResults governs a results download: no body to admit, only
// the answer to read.
func (x *Exchange) beginBatchResults() HeadersVerdict {
	x.phase = phaseForwarded
	x.pricedAt = x.g.opts.Now()
	x.forwardedAt = x.pricedAt
	var v HeadersVerdict
	v.ResponseOnly = true
	// The results are read as they pass; asked for uncompressed, and whole:
	// a range of them (206) would settle the batch at the lines it holds.
	v.Edits.set("accept-encoding", "identity")
	v.Edits.remove("range")
	v.Edits.remove("if-range")
	return v
}

// batchResultsHeaders decides whether the download can settle its batch:
// only a whole (200), uncompressed answer is read; any other is passed on
// and settles nothing, leaving the batch to its estimate.
func (x *Exchange) batchResultsHeaders(h Headers) {
	ce, _ := h.Get("content-encoding")
	if enc, known := wire.ParseContentEncoding(ce); x.status != 200 || !known || enc != wire.Identity {
		x.b.failed = true
	}
}

// batchResultsChunk meters results lines as they pass, unchanged.
func (x *Exchange) batchResultsChunk(chunk []byte, end bool) ChunkVerdict {
	for !x.b.failed && len(chunk) > 0 {
		i := bytes.IndexByte(chunk, '\n')
		if i < 0 {
			if len(x.b.buf)+len(chunk) > maxBatchResultLine {
				x.b.failed = true
				break
			}
			x.b.buf = append(x.b.buf, chunk...)
			break
		}
		x.b.buf = append(x.b.buf, chunk[:i]...)
		x.batchResultLine()
		chunk = chunk[i+1:]
	}
	if !end {
		return ChunkVerdict{}
	}
	x.batchResultsEnd()
	return ChunkVerdict{Done: true}
}

func (x *Exchange) batchResultLine() {
	line := bytes.TrimSpace(x.b.buf)
	x.b.buf = x.b.buf[:0]
	if len(line) == 0 {
		return
	}
	if x.oa.kind == oaOutput {
		x.openaiOutputLine(line)
		return
	}
	r, err := anthropic.ParseBatchResult(line)
	if err != nil {
		x.b.failed = true
		return
	}
	x.b.lines++
	if !r.Succeeded {
		return
	}
	x.b.add(x, r.Model, r.Usage)
}

// add counts one succeeded line's usage, priced at batch prices by model.
func (b *batchState) add(x *Exchange, model string, u accounting.Usage) {
	b.succeeded++
	u.ServiceTier = accounting.TierBatch.String()
	price, canonical, known := x.cfg.Prices.Lookup(model, x.pricedAt)
	if !known {
		x.unpriced = true
	} else if b.model == "" {
		b.model = canonical // the batch's model label: its first priced line's
	}
	c := price.Cost(u)
	b.cost.Input += c.Input
	b.cost.Output += c.Output
	b.cost.CacheRead += c.CacheRead
	b.cost.CacheWrite += c.CacheWrite
	b.cost.Total += c.Total
	bu := &b.usage
	bu.InputTokens += u.InputTokens
	bu.OutputTokens += u.OutputTokens
	bu.CacheReadTokens += u.CacheReadTokens
	bu.CacheWrite5mTokens += u.CacheWrite5mTokens
	bu.CacheWrite1hTokens += u.CacheWrite1hTokens
	bu.ServiceTier = u.ServiceTier
}

// batchResultsEnd ends a download: read whole, its settle is due.
func (x *Exchange) batchResultsEnd() {
	if len(bytes.TrimSpace(x.b.buf)) > 0 && !x.b.failed {
		x.batchResultLine()
	}
	x.phase = phaseDone
	x.decisionTag = "batch_results"
	x.outcome = &Outcome{
		Dialect: x.batchDialect(), Tenant: x.tenant, TenantLabel: x.cfg.TenantLabel(x.tenant), Policy: x.policyName(),
		ModelLabel: policy.OtherLabel, Result: ResultBatchResults, Decision: x.decisionTag, Latency: time.Since(x.forwardedAt),
	}
}

// resultsReservation is the reservation a results download settles: a
// Message Batch's, or (an OpenAI output file) the batch's that wrote it.
func (x *Exchange) resultsReservation() string {
	if x.oa.kind == oaOutput {
		return openaiBatchReservation(x.b.resultsID)
	}
	return batchReservation(x.b.resultsID)
}

// settleBatch settles a downloaded batch's reservation to what its
// succeeded lines used, once: a second download finds it settled.
func (x *Exchange) settleBatch() {
	if x.b.failed || x.b.lines == 0 {
		x.g.obs.Outcome(x.outcome)
		return
	}
	_, _, budgets := x.levelRequest(x.g.opts.Now())
	ctx, cancel := x.g.detached(x.ctx)
	defer cancel()
	start := x.g.opts.Now()
	res, err := x.g.opts.Store.Settle(ctx, limiter.SettleRequest{
		Tenant: x.tenant, RequestID: x.resultsReservation(), Cost: int64(x.b.cost.Total), Budgets: budgets,
	})
	x.g.obs.StoreCall("settle", x.g.opts.Now().Sub(start), err)
	if err != nil {
		x.g.log.Error("batch settle failed; its reservation stays charged at its estimate until it ends", "tenant", x.tenant, "batch", x.b.resultsID, "err", err)
	}
	if err == nil && res.Settled {
		// The batch's spend, measured, counted once: by the download that
		// settled it.
		x.outcome.Usage, x.outcome.Cost, x.outcome.Source = x.b.usage, x.b.cost, SourceMeasured
		x.outcome.Result, x.outcome.Metered, x.outcome.Unpriced = ResultOK, true, x.unpriced
		if x.b.model != "" {
			x.outcome.ModelLabel = x.b.model
		}
		x.recordExpired(res.Expired)
		x.observeBudgets(res.Budgets)
		x.recordCrossings(res.Crossed)
		x.countBatch(x.tenant, BatchSettled, x.batchDialect(), int64(x.b.cost.Total))
	}
	x.g.obs.Outcome(x.outcome)
}
