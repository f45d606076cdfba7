package gate

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/openai"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// The OpenAI Batch API (https://platform.openai.com/docs/guides/batch) is
// two calls: POST /v1/files uploads the requests (a JSONL file, purpose
// batch), POST /v1/batches names the file. The upload is where the requests
// can be read; the batch is where money is committed. So:
//
//   - The upload of a batch file is read (the form streaming, the file line
//     by line, within the policy's batches.max_requests and the request-body
//     bound) and every line estimated at batch prices as the request it is,
//     with its whole output bound; a file that cannot be estimated, or that
//     calls a model the policy does not allow, is refused in OpenAI's shape.
//     Nothing is reserved: a file never used for a batch costs nothing. The
//     estimate is kept in the store as a note of the org under the file id
//     the answer gives (batches.file_ttl), so any replica can find it.
//   - POST /v1/batches finds the named file's estimate and admits it, as an
//     Anthropic batch is admitted (batch.go): one detached reservation at
//     every level, renamed after the batch id of the answer. A file the org
//     did not upload through tokenwarden (or whose estimate expired) is
//     refused: otherwise a file uploaded past tokenwarden would be a batch
//     nobody estimated.
//   - GET /v1/batches/{id} answering a finished batch settles it once, from
//     the batch's usage at batch prices (the estimate's note keeps the
//     model: the usage does not name it). The Batch API takes one model per
//     file (https://platform.openai.com/docs/guides/batch), so one price
//     prices the whole usage; a file of several models is refused on upload.
//     A finished batch without usage settles from its output file's lines
//     when it is downloaded (GET /v1/files/{output_file_id}/content).
//
// Uploads tokenwarden cannot read — no content-length, larger than
// batches.max_file_bytes, compressed, from an unidentified caller — pass through
// unread and unrecorded; a batch naming such a file is then refused. That
// is why the upload needs no STREAMED body mode: nothing is admitted there,
// and what is not read whole is never admitted later.

// OpenAIBatchDialect is the Outcome.Dialect of the OpenAI Batch API calls
// tokenwarden governs.
const OpenAIBatchDialect = "openai_batch"

// oaKind is which OpenAI Batch API call an exchange is.
type oaKind uint8

const (
	oaNone   oaKind = iota
	oaUpload        // POST /v1/files
	oaSubmit        // POST /v1/batches
	oaPoll          // GET /v1/batches/{id}
	oaOutput        // GET /v1/files/{id}/content
)

// openaiBatchState is what an OpenAI Batch API exchange keeps.
type openaiBatchState struct {
	kind        oaKind
	contentType string
	// file is the upload's estimate, kept once the answer names the file.
	file oaFileNote
	// batchID is the polled batch; settled marks the poll's settle done.
	batchID string
	status  openai.BatchStatus // what the poll's answer said
	settled bool
	body    []byte // the answer, read whole (bounded)
	tooLong bool
}

// oaFileNote is what the store keeps of an uploaded batch file, and then of
// the batch that names it: enough to admit it and price its usage.
type oaFileNote struct {
	Model    string `json:"m"`            // as the lines name it
	Label    string `json:"l"`            // its canonical name, or other
	URL      string `json:"u"`            // the endpoint every line calls
	Lines    int    `json:"n"`            // requests in the file
	Input    int64  `json:"in"`           // calibrated input estimate
	Output   int64  `json:"out"`          // the lines' whole output bounds
	Cost     int64  `json:"c"`            // nano-USD at batch prices
	Unpriced bool   `json:"up,omitempty"` // the model has no price
	BatchID  string `json:"b,omitempty"`  // an output file's batch
}

func fileNoteKey(id string) string   { return "oaifile:" + id }
func batchNoteKey(id string) string  { return "oaibatch:" + id }
func outputNoteKey(id string) string { return "oaiout:" + id }

// beginOpenAIBatch routes the OpenAI Batch API calls at request headers;
// ok is false for any other request.
func (x *Exchange) beginOpenAIBatch(h Headers, method, path string, identified bool) (v HeadersVerdict, ok bool) {
	p := path
	if i := bytes.IndexByte([]byte(p), '?'); i >= 0 {
		p = p[:i]
	}
	switch {
	case method == "POST" && p == openai.FilesPath:
		if !identified || !x.readableUpload(h) {
			return HeadersVerdict{}, false // passes through, unread
		}
		x.oa.kind = oaUpload
		x.oa.contentType, _ = h.Get("content-type")
		x.dialect = dialect.ForPath("/v1/chat/completions") // OpenAI's error shape
		x.requestID = x.g.nextRequestID()
		return HeadersVerdict{}, true
	case method == "POST" && p == openai.BatchesPath:
		// Governed like any request from here (Begin's checks follow).
		x.oa.kind, x.batch = oaSubmit, true
		x.dialect = dialect.ForPath("/v1/chat/completions")
		return HeadersVerdict{}, false
	case method == "GET" && identified:
		if id, ok := openai.FileContentID(path); ok {
			// The output file of a batch this org submitted whose finish
			// reported no usage is read line by line as it passes, like a
			// Message Batch's results (batch.go), and settles the batch;
			// any other download passes untouched (one store read to tell).
			n, found, err := x.getNote(outputNoteKey(id))
			if err != nil || !found {
				return HeadersVerdict{}, false
			}
			x.oa.kind, x.oa.file, x.b.resultsID = oaOutput, n, n.BatchID
			x.dialect = dialect.ForPath("/v1/chat/completions")
			return x.beginBatchResults(), true
		}
		id, isBatch := openai.BatchIDOfPath(path)
		if !isBatch {
			return HeadersVerdict{}, false
		}
		x.oa.kind, x.oa.batchID = oaPoll, id
		x.dialect = dialect.ForPath("/v1/chat/completions")
		x.phase = phaseForwarded
		x.pricedAt = x.g.opts.Now()
		x.forwardedAt = x.pricedAt
		v.ResponseOnly = true
		v.Edits.set("accept-encoding", "identity") // a small JSON answer, read as it is
		return v, true
	}
	return HeadersVerdict{}, false
}

// readableUpload reports an upload the gate can read whole: its length
// declared and within the policy's batches.max_file_bytes (what Envoy can
// buffer), uncompressed.
func (x *Exchange) readableUpload(h Headers) bool {
	cl, ok := h.Get("content-length")
	n, err := strconv.ParseInt(cl, 10, 64)
	if !ok || err != nil || n <= 0 || n > min(x.policy.Batches.MaxFileBytes, MaxRequestBody) {
		return false
	}
	if ce, ok := h.Get("content-encoding"); ok {
		if enc, known := wire.ParseContentEncoding(ce); !known || enc != wire.Identity {
			return false
		}
	}
	return true
}

// openaiBatchBody reads the body of an upload or a batch submission.
func (x *Exchange) openaiBatchBody(body []byte) BodyVerdict {
	if x.oa.kind == oaSubmit {
		return x.openaiSubmit(body)
	}
	up, err := openai.ParseFileUpload(x.oa.contentType, bytes.NewReader(body), openai.BatchFileLimits{
		MaxLines: x.policy.Batches.MaxRequests, MaxBytes: MaxRequestBody,
	})
	if up.Purpose != openai.BatchPurpose {
		// Another purpose (or a form unread): not tokenwarden's to govern.
		x.passedThrough()
		return BodyVerdict{Body: body}
	}
	if reply := x.batchesAllowed(); reply != nil {
		return BodyVerdict{Reply: reply}
	}
	if err != nil {
		return BodyVerdict{Reply: x.refuse(err)}
	}
	note, err := x.estimateBatchFile(up.Lines)
	if err != nil {
		return BodyVerdict{Reply: x.refuse(err)}
	}
	x.oa.file = note
	x.requestedModel, x.model, x.modelLabel = note.Model, note.Model, note.Label
	x.phase = phaseForwarded
	x.forwardedAt = x.g.opts.Now()
	return BodyVerdict{Body: body}
}

// errBatchFile is a file tokenwarden will not estimate as one batch.
var errBatchFile = errors.New("batch file")

// estimateBatchFile estimates every line as the request it is, at batch
// prices, with its whole output bound (nothing can clamp a batch request
// later), and checks every model against the policy.
func (x *Exchange) estimateBatchFile(lines []openai.BatchFileLine) (oaFileNote, error) {
	x.pricedAt = x.g.opts.Now()
	var n oaFileNote
	for i := range lines {
		l := &lines[i]
		if i == 0 {
			n.Model, n.URL = l.Request.Model, l.URL
		} else if l.Request.Model != n.Model || l.URL != n.URL {
			// One batch runs one model on one endpoint
			// (https://platform.openai.com/docs/guides/batch): such a file
			// would fail at the provider, and its usage could not be priced.
			return n, wire.Invalid("tokenwarden: " + errBatchFile.Error() + " line " + strconv.Itoa(i+1) + ": every line of a batch file must call the same model and endpoint as the first")
		}
		x.req = l.Request
		if _, _, err := x.resolveModel(l.Request.Model); err != nil {
			return n, err
		}
		price, canonical, known := x.cfg.Prices.Lookup(l.Request.Model, x.pricedAt)
		if i == 0 {
			n.Label = policy.OtherLabel
			if known {
				n.Label = canonical
			} else {
				n.Unpriced = true
				x.unpriced = true
				x.g.obs.Unconfigured(UnconfiguredModel)
			}
		}
		in := calibrated(l.Request.InputTokens, x.g.calib.factor(x.tenant, n.Label))
		out := x.batchLineOutput(&l.Request, n.Label)
		u := accounting.Usage{InputTokens: in, OutputTokens: out, ServiceTier: accounting.TierBatch.String()}
		n.Cost += int64(price.Cost(u).Total)
		n.Input += in
		n.Output += out
		n.Lines++
	}
	x.req = wire.Request{}
	return n, nil
}

// batchLineOutput is the whole output a batch line may produce: its own
// bound, else the model's maximum (or the policy's default); none for
// embeddings.
func (x *Exchange) batchLineOutput(req *wire.Request, label string) int64 {
	if req.NoOutput {
		return 0
	}
	if req.MaxTokens > 0 {
		return min(req.MaxTokens, accounting.MaxPlausibleTokens)
	}
	name := req.Model
	if label != policy.OtherLabel {
		name = label
	}
	out, known := accounting.LookupMaxOutputTokens(name)
	if !known {
		out = x.policy.DefaultMaxOutputTokens
	}
	return min(out, accounting.MaxPlausibleTokens)
}

// openaiSubmit admits POST /v1/batches with the estimate of the file it
// names.
func (x *Exchange) openaiSubmit(body []byte) BodyVerdict {
	if reply := x.batchesAllowed(); reply != nil {
		return BodyVerdict{Reply: reply}
	}
	c, err := openai.ParseBatchCreate(body)
	if err != nil {
		return BodyVerdict{Reply: x.refuse(err)}
	}
	note, found, err := x.getNote(fileNoteKey(c.InputFileID))
	if err != nil {
		x.decisionTag = "failed_closed"
		return BodyVerdict{Reply: x.reject(503, wire.ErrorUnavailable, "", "tokenwarden: the estimate of the batch's file cannot be read now; retry shortly", ResultStoreError, nil)}
	}
	if !found {
		x.decisionTag = "denied_unknown_file"
		x.g.obs.Admission(x.cfg.TenantLabel(x.tenant), x.decisionTag)
		return BodyVerdict{Reply: x.reject(400, wire.ErrorInvalidRequest, "", "tokenwarden: input_file_id "+strconv.Quote(c.InputFileID)+
			" was not uploaded through tokenwarden by this organization in the last "+x.policy.Batches.FileTTL.String()+
			"; upload the batch file (purpose batch) through it, then create the batch", ResultInvalidRequest, nil)}
	}
	if c.Endpoint != note.URL {
		return BodyVerdict{Reply: x.refuse(wire.Invalid("endpoint " + strconv.Quote(c.Endpoint) + " is not the one the file's lines call (" + note.URL + ")"))}
	}
	x.oa.file = note
	x.pricedAt = x.g.opts.Now()
	x.requestedModel, x.model, x.modelLabel, x.unpriced = note.Model, note.Model, note.Label, note.Unpriced
	x.estimate = accounting.Usage{InputTokens: note.Input, OutputTokens: note.Output, ServiceTier: accounting.TierBatch.String()}
	x.estimateCost = accounting.NanoUSD(note.Cost)
	return x.admitBatch(body)
}

// notes is the store's Notes, or nil.
func (x *Exchange) notes() limiter.Notes {
	n, _ := x.g.opts.Store.(limiter.Notes)
	return n
}

// getNote reads a note of the caller's org; a store without notes has
// none.
func (x *Exchange) getNote(key string) (oaFileNote, bool, error) {
	ns := x.notes()
	if ns == nil {
		return oaFileNote{}, false, nil
	}
	ctx, cancel := x.g.detached(x.ctx)
	defer cancel()
	start := x.g.opts.Now()
	v, found, err := ns.GetNote(ctx, x.tenant, key)
	x.g.obs.StoreCall("note_get", x.g.opts.Now().Sub(start), err)
	if err != nil || !found {
		return oaFileNote{}, false, err
	}
	var n oaFileNote
	if err := json.Unmarshal(v, &n); err != nil || n.Model == "" {
		x.g.log.Error("a batch note cannot be read; taken as absent", "tenant", x.tenant, "key", key)
		return oaFileNote{}, false, nil
	}
	return n, true, nil
}

// putNote writes a note of the caller's org.
func (x *Exchange) putNote(key string, n oaFileNote, ttl time.Duration) error {
	ns := x.notes()
	if ns == nil {
		return errors.New("the store keeps no notes")
	}
	v, err := json.Marshal(n)
	if err != nil {
		return err
	}
	ctx, cancel := x.g.detached(x.ctx)
	defer cancel()
	start := x.g.opts.Now()
	err = ns.PutNote(ctx, limiter.Note{Tenant: x.tenant, Key: key, Value: v, TTL: min(ttl, limiter.MaxNoteTTL)})
	x.g.obs.StoreCall("note_put", x.g.opts.Now().Sub(start), err)
	return err
}

// noteBatch keeps, under the batch id the provider gave, what its settle
// needs (the model and the estimate), for its reservation's lifetime.
func (x *Exchange) noteBatch(id string) {
	if err := x.putNote(batchNoteKey(id), x.oa.file, x.policy.Batches.ReservationTTL); err != nil {
		x.g.log.Error("batch note not kept; the batch will be charged at its estimate when its reservation ends", "tenant", x.tenant, "batch", id, "err", err)
	}
}

// passedThrough ends an exchange the gate turns out not to govern.
func (x *Exchange) passedThrough() {
	x.phase = phaseDone
	x.oa.kind = oaNone
	x.outcome = &Outcome{Dialect: PassThroughDialect, Tenant: x.tenant, TenantLabel: x.cfg.TenantLabel(x.tenant),
		Policy: x.policyName(), ModelLabel: policy.OtherLabel, Result: ResultOK, Decision: "passthrough"}
	x.g.obs.Outcome(x.outcome)
}

// maxBatchObject bounds the answers read whole: a File or Batch object.
const maxBatchObject = 1 << 20

// openaiBatchResponse reads the headers of an upload's or a poll's answer:
// only a 200 is read (a File or Batch object); any other ends the exchange
// recording nothing.
func (x *Exchange) openaiBatchResponse(endOfStream bool) ResponseVerdict {
	if x.status != 200 || endOfStream {
		x.openaiBatchEnd()
		return ResponseVerdict{SkipBody: x.status != 200, Done: true}
	}
	return ResponseVerdict{}
}

// openaiOutputLine counts one line of a batch's output file.
func (x *Exchange) openaiOutputLine(line []byte) {
	l, err := openai.ParseBatchOutputLine(line, x.oa.file.URL)
	if err != nil {
		x.b.failed = true
		return
	}
	x.b.lines++
	if l.Succeeded {
		// Priced by the file's model, as the batch's usage would be.
		x.b.add(x, x.oa.file.Model, l.Usage)
	}
}

// openaiBatchChunk keeps the answer and, at its end, acts on it.
func (x *Exchange) openaiBatchChunk(chunk []byte, end bool) ChunkVerdict {
	var over bool
	x.oa.body, over = appendBounded(x.oa.body, chunk, maxBatchObject)
	x.oa.tooLong = x.oa.tooLong || over
	if !end {
		return ChunkVerdict{}
	}
	x.openaiBatchEnd()
	return ChunkVerdict{Done: true}
}

// openaiBatchEnd ends an upload or a poll at the end of its answer. An
// upload's estimate is kept here, before the client has the file id: a
// batch naming it may follow at once, on any replica. A poll's settle
// waits for its answer to be sent (settleOpenAIBatch).
func (x *Exchange) openaiBatchEnd() {
	x.phase = phaseDone
	o := &Outcome{Dialect: OpenAIBatchDialect, Tenant: x.tenant, TenantLabel: x.cfg.TenantLabel(x.tenant), Policy: x.policyName(),
		RequestedModel: x.requestedModel, Model: x.model, ModelLabel: policy.OtherLabel, Latency: time.Since(x.forwardedAt)}
	x.outcome = o
	body := x.oa.body
	x.oa.body = nil
	if x.oa.kind == oaPoll {
		o.Result, o.Decision = ResultBatchStatus, "batch_status"
		if x.status == 200 && !x.oa.tooLong {
			if st, err := openai.ParseBatchObject(body); err == nil && st.ID == x.oa.batchID {
				x.oa.status = st
			}
		}
		return
	}
	o.Result, o.Decision, o.ModelLabel = ResultBatchFile, "batch_file", x.modelLabel
	var err error
	switch id, perr := openai.ParseFileObject(body); {
	case x.status != 200:
		o.Result, o.Decision = ResultUpstreamError, "batch_file_refused"
	case perr != nil || x.oa.tooLong:
		err = errors.New("the answer is not a file object")
	default:
		err = x.putNote(fileNoteKey(id), x.oa.file, x.policy.Batches.FileTTL)
	}
	if err != nil {
		// The client has its file; a batch naming it will be refused.
		o.Decision = "batch_file_unrecorded"
		x.g.log.Error("batch file estimate not kept; a batch naming the file will be refused", "tenant", x.tenant, "err", err)
	}
	x.g.obs.Outcome(o)
}

// batchAbort ends an exchange of either batch API that reserves nothing
// of its own — an upload, a poll, a results or output download — whose
// stream ended first: nothing is recorded or settled from an answer not
// seen whole (a download cut short would otherwise settle its batch at the
// lines it held, once and for good). It reports whether the exchange was
// one.
func (x *Exchange) batchAbort() bool {
	if x.oa.kind != oaUpload && x.oa.kind != oaPoll && x.b.resultsID == "" && x.oa.kind != oaOutput {
		return false
	}
	if x.phase == phaseForwarded || x.phase == phaseResponse {
		x.phase = phaseDone
		x.oa.settled, x.b.settled, x.b.failed = true, true, true
		x.outcome = &Outcome{Dialect: x.batchDialect(), Tenant: x.tenant, TenantLabel: x.cfg.TenantLabel(x.tenant), Policy: x.policyName(),
			ModelLabel: policy.OtherLabel, Result: ResultEstimated, Decision: "batch_cut"}
		x.g.obs.Outcome(x.outcome)
	}
	return true
}

// settleOpenAIBatch settles a finished batch a poll saw, once: the batch's
// reservation is keyed by its id under the org, so a second poll (on any
// replica) finds it settled and changes nothing, and another org's poll
// reaches nothing. What it is charged, as the provider bills
// (https://platform.openai.com/docs/guides/batch: an expired or cancelled
// batch's completed requests are billed):
//
//   - its usage, when the Batch object reports one (completed, and expired
//     or cancelled batches with work done), priced at batch prices by the
//     file's model: measured;
//   - nothing for a failed batch without usage (it failed validation and
//     ran nothing): measured;
//   - for any other finished batch without usage (created before the API
//     reported usage, or a provider that does not): the succeeded lines of
//     its output file, when it has one, at the first whole download of it
//     (openaiOutputLine), measured; without an output file, its estimate,
//     estimated.
func (x *Exchange) settleOpenAIBatch() {
	o, st := x.outcome, x.oa.status
	if !batchFinished(st.Status) {
		x.g.obs.Outcome(o)
		return
	}
	note, found, err := x.getNote(batchNoteKey(st.ID))
	if err != nil || !found {
		// Not a batch admitted through tokenwarden for this org (or its
		// reservation already ended): nothing of its own to settle.
		x.g.obs.Outcome(o)
		return
	}
	if !st.HasUsage && st.OutputFileID != "" && st.Status != "failed" {
		// The usage is in the output file's lines: the first whole
		// download of it settles the batch (openaiOutputLine); until then
		// its reservation holds, and ends at its estimate if never read.
		n := note
		n.BatchID = st.ID
		if err := x.putNote(outputNoteKey(st.OutputFileID), n, x.policy.Batches.ReservationTTL); err != nil {
			x.g.log.Error("batch output file not noted; the batch will be charged at its estimate when its reservation ends", "tenant", x.tenant, "batch", st.ID, "err", err)
		}
		x.g.obs.Outcome(o)
		return
	}
	var cost accounting.Cost
	usage, source := st.Usage, SourceMeasured
	switch {
	case st.HasUsage:
		price, _, _ := x.cfg.Prices.Lookup(note.Model, x.pricedAt)
		cost = price.Cost(usage)
	case st.Status == "failed":
		usage = accounting.Usage{}
	default:
		usage = accounting.Usage{InputTokens: note.Input, OutputTokens: note.Output, ServiceTier: accounting.TierBatch.String()}
		cost, source = accounting.Cost{Total: accounting.NanoUSD(note.Cost)}, SourceEstimated
	}
	_, _, budgets := x.levelRequest(x.g.opts.Now())
	ctx, cancel := x.g.detached(x.ctx)
	defer cancel()
	start := x.g.opts.Now()
	res, err := x.g.opts.Store.Settle(ctx, limiter.SettleRequest{
		Tenant: x.tenant, RequestID: openaiBatchReservation(st.ID), Cost: int64(cost.Total), Budgets: budgets,
	})
	x.g.obs.StoreCall("settle", x.g.opts.Now().Sub(start), err)
	if err != nil {
		x.g.log.Error("batch settle failed; its reservation stays charged at its estimate until it ends", "tenant", x.tenant, "batch", st.ID, "err", err)
	}
	if err == nil && res.Settled {
		o.Usage, o.Cost, o.Source = usage, cost, source
		o.Result, o.Metered, o.Unpriced = ResultOK, true, note.Unpriced
		o.Model, o.ModelLabel = note.Model, note.Label
		if source == SourceEstimated {
			o.Result = ResultEstimated
		}
		x.recordExpired(res.Expired)
		x.observeBudgets(res.Budgets)
		x.recordCrossings(res.Crossed)
		x.countBatch(x.tenant, BatchSettled, OpenAIBatchDialect, int64(cost.Total))
	}
	x.g.obs.Outcome(o)
}

// batchFinished reports a Batch status that ends the batch
// (https://platform.openai.com/docs/api-reference/batch/object).
func batchFinished(status string) bool {
	switch status {
	case "completed", "failed", "expired", "cancelled":
		return true
	}
	return false
}
