package mockprovider

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
)

// The OpenAI Batch API, wire-faithful to
// https://platform.openai.com/docs/guides/batch,
// https://platform.openai.com/docs/api-reference/files and
// https://platform.openai.com/docs/api-reference/batch
// (see ../shared/reference/trust-and-providers.md §6.2):
//
//   - POST /v1/files, multipart/form-data with purpose=batch and file: a
//     JSONL file of {custom_id, method: POST, url, body} answers a File
//     object {id: file-…, object: file, bytes, purpose}.
//   - GET /v1/files/{id}; GET /v1/files/{id}/content the file's bytes.
//   - POST /v1/batches {input_file_id, endpoint, completion_window: 24h}
//     answers a Batch validating; GET /v1/batches/{id} reports its status
//     (validating → in_progress → completed | expired), request_counts
//     {total, completed, failed}, output_file_id, error_file_id and usage
//     (the sum of the succeeded lines', present once completed).
//
// Only /v1/chat/completions lines are processed (the others come back as
// failed lines). Knob x-mock-batch on POST /v1/batches: "end" completes the
// batch at once, "expire" expires it (no line processed, no usage);
// absent, it stays in_progress until POST /mock/openai/batches/{id}/{end|expire}.
// The ledger records one entry per succeeded line, RequestID batch_id/custom_id.

const (
	// DialectOpenAIBatch: one ledger entry per succeeded OpenAI batch line.
	DialectOpenAIBatch  = "openai_batch"
	maxOpenAIBatchLines = 50000
)

type oaiFile struct {
	ID        string `json:"id"`
	Object    string `json:"object"`
	Bytes     int64  `json:"bytes"`
	CreatedAt int64  `json:"created_at"`
	Filename  string `json:"filename"`
	Purpose   string `json:"purpose"`
}

type oaiBatchCounts struct {
	Total     int `json:"total"`
	Completed int `json:"completed"`
	Failed    int `json:"failed"`
}

type oaiBatchUsage struct {
	InputTokens        int64 `json:"input_tokens"`
	InputTokensDetails struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokens        int64 `json:"output_tokens"`
	OutputTokensDetails struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	TotalTokens int64 `json:"total_tokens"`
}

type oaiBatch struct {
	ID               string         `json:"id"`
	Object           string         `json:"object"`
	Endpoint         string         `json:"endpoint"`
	InputFileID      string         `json:"input_file_id"`
	CompletionWindow string         `json:"completion_window"`
	Status           string         `json:"status"`
	OutputFileID     *string        `json:"output_file_id"`
	ErrorFileID      *string        `json:"error_file_id"`
	CreatedAt        int64          `json:"created_at"`
	ExpiresAt        int64          `json:"expires_at"`
	CompletedAt      *int64         `json:"completed_at"`
	ExpiredAt        *int64         `json:"expired_at"`
	RequestCounts    oaiBatchCounts `json:"request_counts"`
	Usage            *oaiBatchUsage `json:"usage,omitempty"`
	Metadata         map[string]any `json:"metadata"`
}

type oaiBatchLine struct {
	CustomID string          `json:"custom_id"`
	Method   string          `json:"method"`
	URL      string          `json:"url"`
	Body     json.RawMessage `json:"body"`
}

type oaiBatchState struct {
	obj  oaiBatch
	seed uint64
}

type oaiBatchStore struct {
	mu      sync.Mutex
	files   map[string]oaiFile
	content map[string][]byte
	batches map[string]*oaiBatchState
}

func (s *oaiBatchStore) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files, s.content, s.batches = nil, nil, nil
}

func (s *oaiBatchStore) putFile(f oaiFile, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files == nil {
		s.files, s.content = map[string]oaiFile{}, map[string][]byte{}
	}
	s.files[f.ID], s.content[f.ID] = f, body
}

// openaiBegin is the preamble of every Batch API call: identity headers,
// auth and knobs.
func (p *Provider) openaiBegin(w http.ResponseWriter, r *http.Request) (*oaiCall, bool) {
	seed := p.requestSeed(r)
	c := &oaiCall{id: "req_" + idString(seed, "0123456789abcdef", 32), seed: seed, now: p.opts.Now()}
	w.Header().Set("x-request-id", c.id)
	w.Header().Set("openai-organization", "user-mockprovider")
	if !p.openaiAuth(w, r, c) {
		return nil, false
	}
	k, err := parseKnobs(r.Header)
	if err != nil {
		p.openaiError(w, c, http.StatusBadRequest, oaiErrorInner{Message: err.Error(), Type: "invalid_request_error"}, "")
		return nil, false
	}
	c.k = k
	return c, true
}

func (p *Provider) oaiBadRequest(w http.ResponseWriter, c *oaiCall, status int, msg string) {
	p.openaiError(w, c, status, oaiErrorInner{Message: msg, Type: "invalid_request_error"}, "")
}

func (p *Provider) handleFileCreate(w http.ResponseWriter, r *http.Request) {
	c, ok := p.openaiBegin(w, r)
	if !ok {
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, p.opts.MaxBodyBytes)
	if err := r.ParseMultipartForm(8 << 20); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			p.oaiBadRequest(w, c, http.StatusRequestEntityTooLarge, "Request too large.")
			return
		}
		p.oaiBadRequest(w, c, http.StatusBadRequest, "Invalid multipart form: "+err.Error())
		return
	}
	defer func() { _ = r.MultipartForm.RemoveAll() }()
	purpose := r.FormValue("purpose")
	if purpose != "batch" {
		p.oaiBadRequest(w, c, http.StatusBadRequest, "purpose: this mock accepts only 'batch'")
		return
	}
	f, hdr, err := r.FormFile("file")
	if err != nil {
		p.oaiBadRequest(w, c, http.StatusBadRequest, "file: missing")
		return
	}
	defer f.Close()
	body, err := io.ReadAll(f)
	if err != nil {
		p.oaiBadRequest(w, c, http.StatusBadRequest, "file: could not be read")
		return
	}
	file := oaiFile{ID: "file-" + idString(c.seed^0xf11e, base58, 22), Object: "file", Bytes: int64(len(body)),
		CreatedAt: c.now.Unix(), Filename: hdr.Filename, Purpose: purpose}
	p.oaiBatches.putFile(file, body)
	writeJSON(w, http.StatusOK, file)
}

// fileLookup is the preamble of the file GETs: the file and its bytes, or
// a 404 already written.
func (p *Provider) fileLookup(w http.ResponseWriter, r *http.Request) (oaiFile, []byte, bool) {
	c, ok := p.openaiBegin(w, r)
	if !ok {
		return oaiFile{}, nil, false
	}
	p.oaiBatches.mu.Lock()
	f, found := p.oaiBatches.files[r.PathValue("id")]
	body := p.oaiBatches.content[r.PathValue("id")]
	p.oaiBatches.mu.Unlock()
	if !found {
		p.oaiBadRequest(w, c, http.StatusNotFound, "No such File object: "+r.PathValue("id"))
	}
	return f, body, found
}

func (p *Provider) handleFileGet(w http.ResponseWriter, r *http.Request) {
	if f, _, ok := p.fileLookup(w, r); ok {
		writeJSON(w, http.StatusOK, f)
	}
}

func (p *Provider) handleFileContent(w http.ResponseWriter, r *http.Request) {
	_, body, ok := p.fileLookup(w, r)
	if !ok {
		return
	}
	w.Header().Set("content-type", "application/octet-stream")
	w.Header().Set("content-length", itoa(int64(len(body))))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

func (p *Provider) handleOpenAIBatchCreate(w http.ResponseWriter, r *http.Request) {
	c, ok := p.openaiBegin(w, r)
	if !ok {
		return
	}
	body, err := readBody(w, r, p.opts.MaxBodyBytes)
	if err != nil {
		p.oaiBadRequest(w, c, http.StatusBadRequest, "could not read the request body")
		return
	}
	var req struct {
		InputFileID      string         `json:"input_file_id"`
		Endpoint         string         `json:"endpoint"`
		CompletionWindow string         `json:"completion_window"`
		Metadata         map[string]any `json:"metadata"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		p.oaiBadRequest(w, c, http.StatusBadRequest, "invalid JSON body")
		return
	}
	if req.CompletionWindow != "24h" {
		p.oaiBadRequest(w, c, http.StatusBadRequest, "completion_window: must be '24h'")
		return
	}
	if req.Endpoint == "" {
		p.oaiBadRequest(w, c, http.StatusBadRequest, "endpoint: required")
		return
	}
	outcome := strings.TrimSpace(r.Header.Get("x-mock-batch"))
	if outcome != "" && outcome != "end" && outcome != "expire" {
		p.oaiBadRequest(w, c, http.StatusBadRequest, "x-mock-batch: want end or expire")
		return
	}
	p.oaiBatches.mu.Lock()
	content, found := p.oaiBatches.content[req.InputFileID]
	p.oaiBatches.mu.Unlock()
	if !found {
		p.oaiBadRequest(w, c, http.StatusNotFound, "No such File object: "+req.InputFileID)
		return
	}
	n := bytes.Count(bytes.TrimSpace(content), []byte("\n")) + 1
	if len(bytes.TrimSpace(content)) == 0 || n > maxOpenAIBatchLines {
		p.oaiBadRequest(w, c, http.StatusBadRequest, "input_file_id: the file must hold between 1 and 50000 requests")
		return
	}
	b := &oaiBatchState{seed: c.seed, obj: oaiBatch{
		ID: "batch_" + idString(c.seed^0xba7c, "0123456789abcdef", 32), Object: "batch", Endpoint: req.Endpoint,
		InputFileID: req.InputFileID, CompletionWindow: "24h", Status: "in_progress",
		CreatedAt: c.now.Unix(), ExpiresAt: c.now.Add(batchExpiry).Unix(),
		RequestCounts: oaiBatchCounts{Total: n}, Metadata: req.Metadata,
	}}
	p.oaiBatches.mu.Lock()
	if p.oaiBatches.batches == nil {
		p.oaiBatches.batches = map[string]*oaiBatchState{}
	}
	p.oaiBatches.batches[b.obj.ID] = b
	created := b.obj
	p.oaiBatches.mu.Unlock()
	if outcome != "" {
		p.finishOpenAIBatch(b.obj.ID, outcome == "expire", c.k.outputTokens)
	}
	// The create answer is the batch as submitted (validating on the real
	// API; the mock starts it at once).
	created.Status = "validating"
	created.RequestCounts = oaiBatchCounts{}
	writeJSON(w, http.StatusOK, created)
}

func (p *Provider) handleOpenAIBatchGet(w http.ResponseWriter, r *http.Request) {
	c, ok := p.openaiBegin(w, r)
	if !ok {
		return
	}
	p.oaiBatches.mu.Lock()
	b := p.oaiBatches.batches[r.PathValue("id")]
	var obj oaiBatch
	if b != nil {
		obj = b.obj
	}
	p.oaiBatches.mu.Unlock()
	if b == nil {
		p.oaiBadRequest(w, c, http.StatusNotFound, "No such Batch object: "+r.PathValue("id"))
		return
	}
	writeJSON(w, http.StatusOK, obj)
}

// finishOpenAIBatch processes every line once (or expires the batch) and
// reports whether the batch existed and was in progress.
func (p *Provider) finishOpenAIBatch(id string, expire bool, forcedOut int64) bool {
	s := &p.oaiBatches
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.batches[id]
	if b == nil || b.obj.Status != "in_progress" {
		return false
	}
	now := p.opts.Now().Unix()
	if expire {
		b.obj.Status, b.obj.ExpiredAt = "expired", &now
		b.obj.RequestCounts.Failed = b.obj.RequestCounts.Total
		return true
	}
	var out, errs bytes.Buffer
	var usage oaiBatchUsage
	counts := oaiBatchCounts{Total: b.obj.RequestCounts.Total}
	sc := bufio.NewScanner(bytes.NewReader(s.content[b.obj.InputFileID]))
	sc.Buffer(make([]byte, 0, 64<<10), int(p.opts.MaxBodyBytes))
	for i := 0; sc.Scan(); i++ {
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 {
			continue
		}
		seed := splitmix(b.seed ^ uint64(i+1))
		reqID := "req_" + idString(seed, "0123456789abcdef", 32)
		var l oaiBatchLine
		var f *openaiPrompt
		err := json.Unmarshal(raw, &l)
		if err == nil && (l.Method != http.MethodPost || l.URL != "/v1/chat/completions" || l.URL != b.obj.Endpoint) {
			err = errors.New("url: this mock processes only POST /v1/chat/completions lines of a /v1/chat/completions batch")
		}
		if err == nil {
			f, err = parseOpenAI(l.Body, p.opts)
		}
		if err == nil && (!p.knownModel(f.model) || f.stream) {
			err = errors.New("body: unknown model or stream")
		}
		if err != nil {
			counts.Failed++
			errs.Write(marshal(map[string]any{"id": "batch_req_" + idString(seed, base58, 24), "custom_id": l.CustomID,
				"response": nil, "error": map[string]string{"code": "invalid_request", "message": err.Error()}}))
			errs.WriteByte('\n')
			continue
		}
		n, capped := outputPlan(f.lastUser, forcedOut, f.maxTokens)
		finish := "stop"
		if capped {
			finish = "length"
		}
		u := oaiUsage{PromptTokens: f.promptTokens, CompletionTokens: n, TotalTokens: f.promptTokens + n}
		usage.InputTokens += u.PromptTokens
		usage.OutputTokens += u.CompletionTokens
		usage.TotalTokens += u.TotalTokens
		counts.Completed++
		body := map[string]any{"id": "chatcmpl-" + idString(seed^0xc4a7, base58, 29), "object": "chat.completion",
			"created": now, "model": f.model, "service_tier": "batch", "usage": u,
			"choices": []any{map[string]any{"index": 0, "finish_reason": finish,
				"message": map[string]any{"role": "assistant", "content": strings.Join(words(seed, n), " "), "refusal": nil}}}}
		out.Write(marshal(map[string]any{"id": "batch_req_" + idString(seed, base58, 24), "custom_id": l.CustomID,
			"response": map[string]any{"status_code": 200, "request_id": reqID, "body": body}, "error": nil}))
		out.WriteByte('\n')
		p.ledger.add(LedgerEntry{RequestID: b.obj.ID + "/" + l.CustomID, Model: f.model, Dialect: DialectOpenAIBatch,
			Usage: []json.RawMessage{marshal(u)}, Computed: oaiTokens(u), Reported: oaiTokens(u),
			Complete: true, ServiceTier: "batch"})
	}
	if s.files == nil {
		s.files, s.content = map[string]oaiFile{}, map[string][]byte{}
	}
	store := func(tag uint64, buf *bytes.Buffer) *string {
		if buf.Len() == 0 {
			return nil
		}
		id := "file-" + idString(b.seed^tag, base58, 22)
		s.files[id] = oaiFile{ID: id, Object: "file", Bytes: int64(buf.Len()), CreatedAt: now,
			Filename: "batch_" + b.obj.ID + "_output.jsonl", Purpose: "batch_output"}
		s.content[id] = bytes.Clone(buf.Bytes())
		return &id
	}
	b.obj.OutputFileID, b.obj.ErrorFileID = store(0x0a7, &out), store(0xe77, &errs)
	b.obj.Status, b.obj.CompletedAt, b.obj.RequestCounts, b.obj.Usage = "completed", &now, counts, &usage
	return true
}

// handleOpenAIBatchFinish is the test-facing
// POST /mock/openai/batches/{id}/{end|expire}.
func (p *Provider) handleOpenAIBatchFinish(w http.ResponseWriter, r *http.Request) {
	expire, out, ok := finishRequest(w, r)
	if !ok {
		return
	}
	if !p.finishOpenAIBatch(r.PathValue("id"), expire, out) {
		http.Error(w, "no such batch in progress", http.StatusNotFound)
		return
	}
	p.oaiBatches.mu.Lock()
	obj := p.oaiBatches.batches[r.PathValue("id")].obj
	p.oaiBatches.mu.Unlock()
	writeJSON(w, http.StatusOK, obj)
}
