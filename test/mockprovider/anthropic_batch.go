package mockprovider

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Anthropic Message Batches, wire-faithful to
// https://docs.anthropic.com/en/docs/build-with-claude/batch-processing,
// https://docs.anthropic.com/en/api/creating-message-batches,
// https://docs.anthropic.com/en/api/retrieving-message-batches and
// https://docs.anthropic.com/en/api/retrieving-message-batch-results
// (see ../shared/reference/trust-and-providers.md §6.1):
//
//   - POST /v1/messages/batches {"requests":[{"custom_id","params"}]} answers
//     a MessageBatch in_progress, expires_at = created_at + 24h, results_url null.
//   - GET /v1/messages/batches/{id}: processing_status in_progress|ended;
//     request_counts stay zero (but processing) until the batch ends; the
//     batch object carries no usage.
//   - GET /v1/messages/batches/{id}/results: JSONL of {custom_id, result},
//     result.type succeeded (with message.usage, service_tier "batch"),
//     errored, canceled or expired.
//
// Params are validated when the batch is processed, not on submit: an
// invalid line comes back errored. Knob x-mock-batch on the submit: "end"
// ends the batch at once, "expire" expires it at once (every line expired);
// absent, it stays in_progress until POST /mock/batches/{id}/end or
// /mock/batches/{id}/expire.

const (
	maxBatchRequests = 100000
	batchExpiry      = 24 * time.Hour
)

type batchLine struct {
	CustomID string          `json:"custom_id"`
	Params   json.RawMessage `json:"params"`
}

type anthBatchCounts struct {
	Processing int `json:"processing"`
	Succeeded  int `json:"succeeded"`
	Errored    int `json:"errored"`
	Canceled   int `json:"canceled"`
	Expired    int `json:"expired"`
}

type anthBatch struct {
	ID                string          `json:"id"`
	Type              string          `json:"type"`
	ProcessingStatus  string          `json:"processing_status"`
	RequestCounts     anthBatchCounts `json:"request_counts"`
	EndedAt           *string         `json:"ended_at"`
	CreatedAt         string          `json:"created_at"`
	ExpiresAt         string          `json:"expires_at"`
	ArchivedAt        *string         `json:"archived_at"`
	CancelInitiatedAt *string         `json:"cancel_initiated_at"`
	ResultsURL        *string         `json:"results_url"`
}

type batchState struct {
	obj     anthBatch
	lines   []batchLine
	seed    uint64
	results []byte // JSONL, set when the batch ends
}

type batchStore struct {
	mu sync.Mutex
	m  map[string]*batchState
}

func (s *batchStore) get(id string) *batchState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id]
}

func (s *batchStore) put(b *batchState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*batchState{}
	}
	s.m[b.obj.ID] = b
}

func (s *batchStore) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m = nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func (p *Provider) handleBatchCreate(w http.ResponseWriter, r *http.Request) {
	c, body, ok := p.beginAnthropic(w, r)
	if !ok {
		return
	}
	var req struct {
		Requests []batchLine `json:"requests"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		p.anthropicError(w, c, http.StatusBadRequest, "requests: invalid JSON body", "")
		return
	}
	if len(req.Requests) == 0 || len(req.Requests) > maxBatchRequests {
		p.anthropicError(w, c, http.StatusBadRequest, "requests: must hold between 1 and 100000 items", "")
		return
	}
	seen := map[string]bool{}
	for _, l := range req.Requests {
		if l.CustomID == "" || len(l.CustomID) > 64 || seen[l.CustomID] {
			p.anthropicError(w, c, http.StatusBadRequest, "requests: custom_id must be unique, 1-64 characters", "")
			return
		}
		seen[l.CustomID] = true
	}
	outcome := strings.TrimSpace(r.Header.Get("x-mock-batch"))
	if outcome != "" && outcome != "end" && outcome != "expire" {
		p.anthropicError(w, c, http.StatusBadRequest, "x-mock-batch: want end or expire", "")
		return
	}
	b := &batchState{lines: req.Requests, seed: c.seed, obj: anthBatch{
		ID: "msgbatch_01" + idString(c.seed^0xba7c, base58, 22), Type: "message_batch",
		ProcessingStatus: "in_progress", RequestCounts: anthBatchCounts{Processing: len(req.Requests)},
		CreatedAt: stamp(c.now), ExpiresAt: stamp(c.now.Add(batchExpiry)),
	}}
	p.batches.put(b)
	if outcome != "" {
		p.finishBatch(b.obj.ID, outcome == "expire", c.k.outputTokens)
	}
	writeJSON(w, http.StatusOK, p.batches.snapshot(b.obj.ID))
}

func (s *batchStore) snapshot(id string) anthBatch {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id].obj
}

// finishBatch processes every line once: succeeded (usage computed as for
// /v1/messages, without the prompt cache), errored (invalid params or an
// unknown model) or, when expire, expired. It reports whether the batch
// existed and was still in progress.
func (p *Provider) finishBatch(id string, expire bool, forcedOut int64) bool {
	p.batches.mu.Lock()
	defer p.batches.mu.Unlock()
	b := p.batches.m[id]
	if b == nil || b.obj.ProcessingStatus != "in_progress" {
		return false
	}
	var out bytes.Buffer
	counts := anthBatchCounts{}
	for i, l := range b.lines {
		seed := splitmix(b.seed ^ uint64(i+1))
		var result any
		switch f, err := parseAnthropic(l.Params, true, p.opts); {
		case expire:
			counts.Expired++
			result = map[string]string{"type": "expired"}
		case err != nil || !p.knownModel(f.model) || f.stream:
			msg := "params: invalid request"
			if err != nil {
				msg = err.Error()
			} else if f.stream {
				msg = "stream: not supported in batches"
			}
			counts.Errored++
			result = map[string]any{"type": "errored", "error": map[string]any{
				"type": "error", "error": map[string]string{"type": "invalid_request_error", "message": msg}}}
		default:
			n, capped := outputPlan(f.lastUser, forcedOut, f.maxTokens)
			stop := "end_turn"
			if capped {
				stop = "max_tokens"
			}
			usage := anthUsage{InputTokens: f.total(), OutputTokens: n, ServiceTier: "batch"}
			msg := anthMessage{Model: f.model, ID: "msg_01" + idString(seed, base58, 22), Type: "message",
				Role: "assistant", Content: []anthText{}, StopReason: &stop, Usage: &usage}
			if ws := words(seed, n); len(ws) > 0 {
				msg.Content = append(msg.Content, anthText{Type: "text", Text: strings.Join(ws, " ")})
			}
			counts.Succeeded++
			result = map[string]any{"type": "succeeded", "message": msg}
			p.ledger.add(LedgerEntry{RequestID: b.obj.ID + "/" + l.CustomID, Model: f.model, Dialect: DialectAnthropicBatch,
				Usage: []json.RawMessage{marshal(usage)}, Computed: anthTokens(usage), Reported: anthTokens(usage),
				Complete: true, ServiceTier: "batch"})
		}
		out.Write(marshal(struct {
			CustomID string `json:"custom_id"`
			Result   any    `json:"result"`
		}{l.CustomID, result}))
		out.WriteByte('\n')
	}
	now := stamp(p.opts.Now())
	url := "/v1/messages/batches/" + b.obj.ID + "/results"
	b.obj.ProcessingStatus, b.obj.RequestCounts, b.obj.EndedAt, b.obj.ResultsURL = "ended", counts, &now, &url
	b.results = out.Bytes()
	return true
}

// anthropicGet is the preamble of the batch GETs: identity headers and auth.
func (p *Provider) anthropicGet(w http.ResponseWriter, r *http.Request) (*anthCall, bool) {
	seed := p.requestSeed(r)
	c := &anthCall{id: "req_011C" + idString(seed, base58, 20), seed: seed, now: p.opts.Now()}
	w.Header().Set("request-id", c.id)
	w.Header().Set("anthropic-organization-id", p.opts.OrganizationID)
	return c, p.anthropicAuth(w, r, c)
}

func (p *Provider) handleBatchGet(w http.ResponseWriter, r *http.Request) {
	c, ok := p.anthropicGet(w, r)
	if !ok {
		return
	}
	if p.batches.get(r.PathValue("id")) == nil {
		p.anthropicError(w, c, http.StatusNotFound, "batch not found", "")
		return
	}
	writeJSON(w, http.StatusOK, p.batches.snapshot(r.PathValue("id")))
}

func (p *Provider) handleBatchResults(w http.ResponseWriter, r *http.Request) {
	c, ok := p.anthropicGet(w, r)
	if !ok {
		return
	}
	p.batches.mu.Lock()
	b := p.batches.m[r.PathValue("id")]
	var res []byte
	if b != nil {
		res = b.results
	}
	p.batches.mu.Unlock()
	switch {
	case b == nil:
		p.anthropicError(w, c, http.StatusNotFound, "batch not found", "")
	case res == nil:
		p.anthropicError(w, c, http.StatusBadRequest, "Batch is still processing; results are not yet available.", "")
	default:
		// The results are served as a JSONL download.
		w.Header().Set("content-type", "application/binary")
		w.Header().Set("content-length", itoa(int64(len(res))))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(res)
	}
}

// handleBatchFinish is the test-facing POST /mock/batches/{id}/{end|expire}.
func (p *Provider) handleBatchFinish(w http.ResponseWriter, r *http.Request) {
	expire, out, ok := finishRequest(w, r)
	if !ok {
		return
	}
	if !p.finishBatch(r.PathValue("id"), expire, out) {
		http.Error(w, "no such batch in progress", http.StatusNotFound)
		return
	}
	writeJSON(w, http.StatusOK, p.batches.snapshot(r.PathValue("id")))
}

// finishRequest reads a test-facing finish call, POST /mock/…/{id}/{end|
// expire}: whether it expires the batch and the forced output tokens, or
// false with a 400 written.
func finishRequest(w http.ResponseWriter, r *http.Request) (expire bool, outputTokens int64, ok bool) {
	action := r.PathValue("action")
	if action != "end" && action != "expire" {
		http.Error(w, "want end or expire", http.StatusBadRequest)
		return false, 0, false
	}
	k, err := parseKnobs(r.Header)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return false, 0, false
	}
	return action == "expire", k.outputTokens, true
}
