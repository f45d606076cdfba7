package mockprovider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The OpenAI Responses API (https://platform.openai.com/docs/api-reference/responses):
// POST /v1/responses (JSON, SSE with stream: true, background: true),
// POST /v1/responses/compact, and GET /v1/responses/{id} for a background
// response. Usage follows the token rule; x-mock-cached-tokens and
// x-mock-cache-write-tokens move part of the prompt to the cache classes
// (input_tokens still counts them, as the API's does), x-mock-reasoning-tokens
// adds reasoning tokens (counted in output_tokens, with a reasoning item),
// and x-mock-incomplete forces status incomplete. A response whose output
// would exceed max_output_tokens is cut to it and incomplete, as the API
// does.

type responsesRequest struct {
	Model              string            `json:"model"`
	Input              json.RawMessage   `json:"input"`
	Instructions       *string           `json:"instructions"`
	Tools              []json.RawMessage `json:"tools"`
	MaxOutputTokens    *int64            `json:"max_output_tokens"`
	Stream             bool              `json:"stream"`
	Background         bool              `json:"background"`
	PreviousResponseID *string           `json:"previous_response_id"`
	PromptCacheOptions *oaiCacheOptions  `json:"prompt_cache_options"`
}

type responsesPrompt struct {
	req          responsesRequest
	promptTokens int64
	lastUser     []byte
	// breakpoints are the explicit prompt-cache breakpoints, on a model
	// that takes them, of which the latest counted are written.
	breakpoints []oaiBreakpoint
	counted     int
}

// parseResponses validates a Responses body and counts its prompt: the
// instructions and each message as a Chat message (overhead plus its text
// parts, images and files at ImageTokens), a call its name and arguments, a
// call output its text, any other item its JSON, and each tool its JSON.
func parseResponses(body []byte, opts Options, compact bool) (*responsesPrompt, error) {
	var p responsesPrompt
	if err := json.Unmarshal(body, &p.req); err != nil {
		return nil, &oaiRequestError{msg: "We could not parse the JSON body of your request. " +
			"(HINT: This likely means you aren't using your HTTP library correctly.)"}
	}
	if p.req.Model == "" {
		return nil, &oaiRequestError{msg: "Missing required parameter: 'model'.", param: "model", code: "missing_required_parameter"}
	}
	if !compact && len(bytes.TrimSpace(p.req.Input)) == 0 && p.req.PreviousResponseID == nil {
		return nil, &oaiRequestError{msg: "Missing required parameter: 'input'.", param: "input", code: "missing_required_parameter"}
	}
	if m := p.req.MaxOutputTokens; m != nil && *m < 16 {
		return nil, &oaiRequestError{msg: fmt.Sprintf("Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got %d instead.", *m),
			param: "max_output_tokens", code: "integer_below_min_value"}
	}
	var toolsTokens int64
	for _, t := range p.req.Tools {
		toolsTokens += ceilTokens(len(t))
	}
	var bw *bpWalker
	if takesBreakpoints(p.req.Model) {
		var err error
		if p.counted, err = p.req.PromptCacheOptions.counted(); err != nil {
			return nil, err
		}
		bw = newBPWalker(p.req.Model, p.req.Tools, toolsTokens, responsesBreakpointParts, opts.ImageTokens)
	}
	if p.req.Instructions != nil {
		n := opts.MessageOverhead + ceilTokens(len(*p.req.Instructions))
		p.promptTokens += n
		if bw != nil {
			bw.text(*p.req.Instructions, n)
		}
	}
	input := bytes.TrimSpace(p.req.Input)
	switch {
	case len(input) == 0 || bytes.Equal(input, []byte("null")):
	case input[0] == '"':
		var s string
		if err := json.Unmarshal(input, &s); err != nil {
			return nil, &oaiRequestError{msg: "Invalid 'input'.", param: "input"}
		}
		p.promptTokens += opts.MessageOverhead + ceilTokens(len(s))
		p.lastUser = input
	default:
		var items []struct {
			Type      string          `json:"type"`
			Role      string          `json:"role"`
			Content   json.RawMessage `json:"content"`
			Name      string          `json:"name"`
			Arguments string          `json:"arguments"`
			Output    json.RawMessage `json:"output"`
		}
		if err := json.Unmarshal(input, &items); err != nil {
			return nil, &oaiRequestError{msg: "Invalid 'input': expected a string or an array of input items.", param: "input"}
		}
		var raws []json.RawMessage
		_ = json.Unmarshal(input, &raws)
		for i, it := range items {
			var n int64
			switch {
			case it.Role != "":
				c, err := responsesContentTokens(it.Content, opts.ImageTokens)
				if err != nil {
					return nil, &oaiRequestError{msg: fmt.Sprintf("Invalid 'input[%d].content': %v", i, err), param: fmt.Sprintf("input[%d].content", i)}
				}
				n = opts.MessageOverhead + c
				if it.Role == "user" {
					p.lastUser = it.Content
				}
			case it.Type == "function_call":
				n = ceilTokens(len(it.Name) + len(it.Arguments))
			case it.Type == "function_call_output":
				var s string
				if json.Unmarshal(it.Output, &s) == nil {
					n = ceilTokens(len(s))
				} else {
					n = ceilTokens(len(it.Output))
				}
			default:
				n = ceilTokens(len(raws[i]))
			}
			p.promptTokens += n
			if bw != nil && it.Role != "" {
				if err := bw.message(raws[i], n, opts.MessageOverhead, fmt.Sprintf("input[%d]", i)); err != nil {
					return nil, err
				}
			} else if bw != nil {
				bw.h.Write(raws[i])
				bw.run += n
			}
		}
	}
	p.promptTokens += toolsTokens
	if bw != nil {
		p.breakpoints = bw.bps
	}
	if p.lastUser == nil {
		p.lastUser = body
	}
	return &p, nil
}

func responsesContentTokens(raw json.RawMessage, imageTokens int64) (int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return 0, nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, err
		}
		return ceilTokens(len(s)), nil
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return 0, errors.New("expected a string or an array of content parts")
	}
	var n int64
	for _, part := range parts {
		switch {
		case part.Text != nil:
			n += ceilTokens(len(*part.Text))
		case part.Type == "refusal":
		default:
			n += imageTokens // input_image, input_file, input_audio
		}
	}
	return n, nil
}

// Responses wire types, in the field order of the API reference.
type respUsage struct {
	InputTokens         int64             `json:"input_tokens"`
	InputTokensDetails  respInputDetails  `json:"input_tokens_details"`
	OutputTokens        int64             `json:"output_tokens"`
	OutputTokensDetails respOutputDetails `json:"output_tokens_details"`
	TotalTokens         int64             `json:"total_tokens"`
}

type respInputDetails struct {
	CachedTokens     int64 `json:"cached_tokens"`
	CacheWriteTokens int64 `json:"cache_write_tokens"`
}

type respOutputDetails struct {
	ReasoningTokens int64 `json:"reasoning_tokens"`
}

func respTokens(u respUsage) Tokens {
	return Tokens{
		InputTokens:        u.InputTokens - u.InputTokensDetails.CachedTokens - u.InputTokensDetails.CacheWriteTokens,
		CacheReadTokens:    u.InputTokensDetails.CachedTokens,
		CacheWrite5mTokens: u.InputTokensDetails.CacheWriteTokens,
		OutputTokens:       u.OutputTokens,
	}
}

type respIncomplete struct {
	Reason string `json:"reason"`
}

type respContent struct {
	Type        string   `json:"type"`
	Text        string   `json:"text"`
	Annotations []string `json:"annotations"`
	Logprobs    []string `json:"logprobs"`
}

type respItem struct {
	ID      string        `json:"id"`
	Type    string        `json:"type"`
	Status  string        `json:"status,omitempty"`
	Role    string        `json:"role,omitempty"`
	Content []respContent `json:"content,omitempty"`
	Summary []string      `json:"summary,omitempty"`
}

// respObject is the Response object. Summary of reasoning items must be
// present (an empty list) even when empty, so reasoning items are written
// with their own type.
type respObject struct {
	ID                 string          `json:"id"`
	Object             string          `json:"object"`
	CreatedAt          int64           `json:"created_at"`
	Status             string          `json:"status"`
	Background         bool            `json:"background"`
	Error              json.RawMessage `json:"error"`
	IncompleteDetails  *respIncomplete `json:"incomplete_details"`
	Instructions       *string         `json:"instructions"`
	MaxOutputTokens    *int64          `json:"max_output_tokens"`
	Model              string          `json:"model"`
	Output             []any           `json:"output"`
	ParallelToolCalls  bool            `json:"parallel_tool_calls"`
	PreviousResponseID *string         `json:"previous_response_id"`
	Reasoning          struct {
		Effort  *string `json:"effort"`
		Summary *string `json:"summary"`
	} `json:"reasoning"`
	Store       bool            `json:"store"`
	Temperature float64         `json:"temperature"`
	Text        json.RawMessage `json:"text"`
	ToolChoice  string          `json:"tool_choice"`
	Tools       []any           `json:"tools"`
	TopP        float64         `json:"top_p"`
	Truncation  string          `json:"truncation"`
	ServiceTier string          `json:"service_tier"`
	Usage       *respUsage      `json:"usage"`
	User        *string         `json:"user"`
	Metadata    struct{}        `json:"metadata"`
}

type reasoningItem struct {
	ID      string   `json:"id"`
	Type    string   `json:"type"`
	Summary []string `json:"summary"`
}

// respPlan is what one response will say: its output split into reasoning
// and visible words, its status and usage.
type respPlan struct {
	obj       respObject
	words     []string
	reasoning int64
	msgID     string
	usage     respUsage
	// cache warms the explicit breakpoints; committed once admitted.
	cache cachePlan
}

func (p *Provider) planResponse(c *oaiCall, req *responsesPrompt) respPlan {
	k := c.k
	visible, _ := outputPlan(req.lastUser, k.outputTokens, -1)
	reasoning := k.reasoningTokens
	incomplete := k.incomplete
	if m := req.req.MaxOutputTokens; m != nil && reasoning+visible > *m {
		// The bound includes reasoning: reasoning is spent first.
		reasoning = min(reasoning, *m)
		visible = *m - reasoning
		incomplete = "max_output_tokens"
	}
	cached := min(k.cachedTokens, req.promptTokens)
	written := min(k.cacheWriteTokens, req.promptTokens-cached)
	var plan cachePlan
	if len(req.breakpoints) > 0 && k.cachedTokens == 0 && k.cacheWriteTokens == 0 {
		cached, written, plan = p.cache.planExplicit(req.breakpoints, req.counted, c.now)
	}
	usage := respUsage{
		InputTokens:         req.promptTokens,
		InputTokensDetails:  respInputDetails{CachedTokens: cached, CacheWriteTokens: written},
		OutputTokens:        reasoning + visible,
		OutputTokensDetails: respOutputDetails{ReasoningTokens: reasoning},
		TotalTokens:         req.promptTokens + reasoning + visible,
	}
	obj := respObject{
		ID: "resp_" + idString(c.seed^0x7e5, "0123456789abcdef", 48), Object: "response", CreatedAt: c.now.Unix(),
		Status: "completed", Background: req.req.Background, Error: json.RawMessage("null"),
		Instructions: req.req.Instructions, MaxOutputTokens: req.req.MaxOutputTokens, Model: req.req.Model,
		ParallelToolCalls: true, PreviousResponseID: req.req.PreviousResponseID, Store: true, Temperature: 1,
		Text: json.RawMessage(`{"format":{"type":"text"}}`), ToolChoice: "auto", Tools: []any{}, TopP: 1, Truncation: "disabled",
		ServiceTier: k.tier("default"),
	}
	if incomplete != "" {
		obj.Status, obj.IncompleteDetails = "incomplete", &respIncomplete{Reason: incomplete}
	}
	return respPlan{obj: obj, words: words(c.seed, visible), reasoning: reasoning, usage: usage, cache: plan,
		msgID: "msg_" + idString(c.seed^0x3e55, "0123456789abcdef", 48)}
}

// output is the response's output items when it is done.
func (rp *respPlan) output() []any {
	var out []any
	if rp.reasoning > 0 {
		out = append(out, reasoningItem{ID: rp.reasoningID(), Type: "reasoning", Summary: []string{}})
	}
	return append(out, respItem{ID: rp.msgID, Type: "message", Status: rp.itemStatus(), Role: "assistant",
		Content: []respContent{{Type: "output_text", Text: strings.Join(rp.words, " "), Annotations: []string{}, Logprobs: []string{}}}})
}

func (rp *respPlan) reasoningID() string { return "rs_" + rp.msgID[4:] }

func (rp *respPlan) itemStatus() string {
	if rp.obj.Status == "incomplete" {
		return "incomplete"
	}
	return "completed"
}

func (p *Provider) handleResponses(w http.ResponseWriter, r *http.Request) {
	p.serveResponses(w, r, false)
}

func (p *Provider) handleCompact(w http.ResponseWriter, r *http.Request) {
	p.serveResponses(w, r, true)
}

// serveResponses is the common start of POST /v1/responses and
// /v1/responses/compact, as handleChat's: headers, auth, knobs, body, the
// scripted status, the model and the rate limit.
func (p *Provider) serveResponses(w http.ResponseWriter, r *http.Request, compact bool) {
	c, body, ok := p.openaiStart(w, r)
	if !ok {
		return
	}
	req, err := parseResponses(body, p.opts, compact)
	if err != nil {
		var oe *oaiRequestError
		if !errors.As(err, &oe) {
			oe = &oaiRequestError{msg: err.Error()}
		}
		p.openaiError(w, c, http.StatusBadRequest, oaiErrorInner{Message: oe.msg, Type: "invalid_request_error", Param: strPtr(oe.param), Code: strPtr(oe.code)}, "")
		return
	}
	if !p.openaiModelAdmitted(w, c, req.req.Model, req.promptTokens, 0) {
		return
	}
	rp := p.planResponse(c, req)
	p.cache.commit(rp.cache, c.now)
	entry := LedgerEntry{RequestID: c.id, Model: req.req.Model, Dialect: DialectResponses, Stream: req.req.Stream && !compact,
		Computed: respTokens(rp.usage), NoUsage: c.k.noUsage, ResponseID: rp.obj.ID, ServiceTier: rp.obj.ServiceTier,
		Breakpoints: len(req.breakpoints)}
	switch {
	case compact:
		p.compactResponse(w, c, &rp, entry)
	case req.req.Stream:
		p.streamResponse(w, r, c, &rp, entry)
	case req.req.Background:
		p.backgroundResponse(w, c, &rp, entry)
	default:
		rp.obj.Output = rp.output()
		if !c.k.noUsage {
			rp.obj.Usage = &rp.usage
			entry.Usage = []json.RawMessage{marshal(rp.usage)}
			entry.Reported = entry.Computed
		}
		entry.Complete = true
		p.ledger.add(entry)
		w.Header().Set("openai-processing-ms", processingMS(c.start))
		writeJSON(w, http.StatusOK, rp.obj)
	}
}

// openaiStart is what every OpenAI handler does first; ok is false when
// it has already answered.
func (p *Provider) openaiStart(w http.ResponseWriter, r *http.Request) (*oaiCall, []byte, bool) {
	seed := p.nextID()
	c := &oaiCall{id: "req_" + idString(seed, "0123456789abcdef", 32), seed: seed, now: p.opts.Now(), start: time.Now()}
	h := w.Header()
	h.Set("x-request-id", c.id)
	h.Set("openai-version", "2020-10-01")
	h.Set("openai-organization", "user-mockprovider")
	if r.Method != http.MethodPost {
		p.openaiError(w, c, http.StatusMethodNotAllowed, oaiErrorInner{Message: "Method Not Allowed", Type: "invalid_request_error"}, "")
		return nil, nil, false
	}
	if !p.openaiAuth(w, r, c) {
		return nil, nil, false
	}
	k, err := parseKnobs(r.Header)
	if err != nil {
		p.openaiError(w, c, http.StatusBadRequest, oaiErrorInner{Message: err.Error(), Type: "invalid_request_error"}, "")
		return nil, nil, false
	}
	c.k = k
	body, err := readBody(w, r, p.opts.MaxBodyBytes)
	if err != nil {
		status, msg := http.StatusBadRequest, "could not read the request body"
		if errors.Is(err, errBodyTooLarge) {
			status, msg = http.StatusRequestEntityTooLarge, "Request too large."
		}
		p.openaiError(w, c, status, oaiErrorInner{Message: msg, Type: "invalid_request_error"}, "")
		return nil, nil, false
	}
	if k.status != 0 {
		p.scriptedOpenAI(w, c)
		return nil, nil, false
	}
	return c, body, true
}

// openaiModelAdmitted answers 404 for an unknown model and 429 when the
// buckets are empty, and otherwise sets the rate-limit headers.
func (p *Provider) openaiModelAdmitted(w http.ResponseWriter, c *oaiCall, model string, in, out int64) bool {
	if !p.knownModel(model) {
		p.openaiError(w, c, http.StatusNotFound, oaiErrorInner{
			Message: fmt.Sprintf("The model `%s` does not exist or you do not have access to it.", model),
			Type:    "invalid_request_error", Code: strPtr("model_not_found"),
		}, "")
		return false
	}
	state, wait, admitted := p.oaiLimit.take(c.now, in, out, p.opts.Enforce)
	if !admitted {
		p.openaiError(w, c, http.StatusTooManyRequests, oaiErrorInner{
			Message: fmt.Sprintf("Rate limit reached for %s on tokens per min (TPM). Please try again in %s.", model, wait.Round(time.Millisecond)),
			Type:    "tokens", Code: strPtr("rate_limit_exceeded"),
		}, retryAfterSeconds(wait))
		return false
	}
	state.setOpenAI(w.Header())
	return true
}

// compactResponse answers /v1/responses/compact: the user messages kept
// and one compaction item, with the usage of the compaction pass.
func (p *Provider) compactResponse(w http.ResponseWriter, c *oaiCall, rp *respPlan, entry LedgerEntry) {
	type compaction struct {
		ID               string `json:"id"`
		Type             string `json:"type"`
		EncryptedContent string `json:"encrypted_content"`
	}
	resp := struct {
		ID        string     `json:"id"`
		Object    string     `json:"object"`
		CreatedAt int64      `json:"created_at"`
		Output    []any      `json:"output"`
		Usage     *respUsage `json:"usage"`
	}{
		ID: "cmp_" + rp.obj.ID[5:], Object: "response.compaction", CreatedAt: rp.obj.CreatedAt,
		Output: []any{compaction{ID: "cmp_item_" + rp.msgID[4:], Type: "compaction", EncryptedContent: idString(c.seed, base58, 64)}},
	}
	if !c.k.noUsage {
		resp.Usage = &rp.usage
		entry.Usage = []json.RawMessage{marshal(rp.usage)}
		entry.Reported = entry.Computed
	}
	entry.Complete, entry.Stream = true, false
	p.ledger.add(entry)
	writeJSON(w, http.StatusOK, resp)
}

// backgroundResponse answers at once with a queued response and no usage;
// the finished response, usage included, waits for GET /v1/responses/{id}.
func (p *Provider) backgroundResponse(w http.ResponseWriter, c *oaiCall, rp *respPlan, entry LedgerEntry) {
	done := rp.obj
	done.Output = rp.output()
	if !c.k.noUsage {
		u := rp.usage
		done.Usage = &u
	}
	p.background.put(done.ID, backgroundDone{obj: done, entry: entry})
	queued := rp.obj
	queued.Status, queued.IncompleteDetails, queued.Output = "queued", nil, []any{}
	entry.Deferred, entry.Complete = true, true
	p.ledger.add(entry)
	writeJSON(w, http.StatusOK, queued)
}

// handleRetrieve answers GET /v1/responses/{id}: a background response,
// finished, with its usage (recorded in the ledger under this request).
func (p *Provider) handleRetrieve(w http.ResponseWriter, r *http.Request) {
	c := &oaiCall{id: "req_" + idString(p.nextID(), "0123456789abcdef", 32), now: p.opts.Now(), start: time.Now()}
	w.Header().Set("x-request-id", c.id)
	if !p.openaiAuth(w, r, c) {
		return
	}
	id := r.PathValue("id")
	d, ok := p.background.get(id)
	if !ok {
		p.openaiError(w, c, http.StatusNotFound, oaiErrorInner{Message: fmt.Sprintf("Response with id '%s' not found.", id),
			Type: "invalid_request_error", Param: strPtr("response_id")}, "")
		return
	}
	e := d.entry
	e.RequestID, e.Complete = c.id, true
	if d.obj.Usage != nil {
		e.Usage = []json.RawMessage{marshal(*d.obj.Usage)}
		e.Reported = e.Computed
	}
	p.ledger.add(e)
	writeJSON(w, http.StatusOK, d.obj)
}

type backgroundDone struct {
	obj   respObject
	entry LedgerEntry
}

// backgroundStore keeps finished background responses, the oldest dropped
// past its bound.
type backgroundStore struct {
	mu    sync.Mutex
	max   int
	order []string
	byID  map[string]backgroundDone
}

func newBackgroundStore(n int) *backgroundStore {
	return &backgroundStore{max: n, byID: map[string]backgroundDone{}}
}

func (s *backgroundStore) put(id string, d backgroundDone) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.order) >= s.max {
		delete(s.byID, s.order[0])
		s.order = s.order[1:]
	}
	s.order = append(s.order, id)
	s.byID[id] = d
}

func (s *backgroundStore) get(id string) (backgroundDone, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.byID[id]
	return d, ok
}

func (s *backgroundStore) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.order, s.byID = nil, map[string]backgroundDone{}
}

// responseEvent frames one Responses stream event: the event line, and data
// that starts with the type and the sequence number, as the API writes it.
func responseEvent(typ string, seq int, body any) []byte {
	rest := marshal(body)
	data := make([]byte, 0, len(rest)+len(typ)+40)
	data = append(data, `{"type":`...)
	data = append(data, marshal(typ)...)
	data = append(data, `,"sequence_number":`...)
	data = append(data, fmt.Sprint(seq)...)
	if len(rest) > 2 {
		data = append(data, ',')
		data = append(data, rest[1:]...)
	} else {
		data = append(data, '}')
	}
	return namedEvent(typ, data)
}

func (p *Provider) streamResponse(w http.ResponseWriter, r *http.Request, c *oaiCall, rp *respPlan, entry LedgerEntry) {
	h := w.Header()
	h.Set("content-type", "text/event-stream; charset=utf-8")
	h.Set("openai-processing-ms", processingMS(c.start))
	w.WriteHeader(http.StatusOK)
	s := newStreamer(w, r, c.k, fnvHash([]byte(c.id)))

	type itemEvent struct {
		OutputIndex int `json:"output_index"`
		Item        any `json:"item"`
	}
	type partEvent struct {
		ItemID       string      `json:"item_id"`
		OutputIndex  int         `json:"output_index"`
		ContentIndex int         `json:"content_index"`
		Part         respContent `json:"part"`
	}
	type deltaEvent struct {
		ItemID       string   `json:"item_id"`
		OutputIndex  int      `json:"output_index"`
		ContentIndex int      `json:"content_index"`
		Delta        string   `json:"delta"`
		Logprobs     []string `json:"logprobs"`
	}
	type textDone struct {
		ItemID       string   `json:"item_id"`
		OutputIndex  int      `json:"output_index"`
		ContentIndex int      `json:"content_index"`
		Text         string   `json:"text"`
		Logprobs     []string `json:"logprobs"`
	}
	type respEvent struct {
		Response respObject `json:"response"`
	}
	var frames [][]byte
	add := func(typ string, body any) { frames = append(frames, responseEvent(typ, len(frames), body)) }

	start := rp.obj
	start.Status, start.IncompleteDetails, start.Output = "in_progress", nil, []any{}
	if rp.obj.Background {
		start.Status = "queued"
	}
	add("response.created", respEvent{start})
	start.Status = "in_progress"
	add("response.in_progress", respEvent{start})
	idx := 0
	if rp.reasoning > 0 {
		ri := reasoningItem{ID: rp.reasoningID(), Type: "reasoning", Summary: []string{}}
		add("response.output_item.added", itemEvent{0, ri})
		add("response.output_item.done", itemEvent{0, ri})
		idx = 1
	}
	text := strings.Join(rp.words, " ")
	add("response.output_item.added", itemEvent{idx, respItem{ID: rp.msgID, Type: "message", Status: "in_progress", Role: "assistant", Content: []respContent{}}})
	empty := respContent{Type: "output_text", Annotations: []string{}, Logprobs: []string{}}
	add("response.content_part.added", partEvent{rp.msgID, idx, 0, empty})
	for _, d := range deltaTexts(c.seed, rp.words) {
		add("response.output_text.delta", deltaEvent{rp.msgID, idx, 0, d, []string{}})
	}
	add("response.output_text.done", textDone{rp.msgID, idx, 0, text, []string{}})
	full := empty
	full.Text = text
	add("response.content_part.done", partEvent{rp.msgID, idx, 0, full})
	add("response.output_item.done", itemEvent{idx, respItem{ID: rp.msgID, Type: "message", Status: rp.itemStatus(), Role: "assistant", Content: []respContent{full}}})
	end := rp.obj
	end.Output = rp.output()
	if !c.k.noUsage {
		end.Usage = &rp.usage
	}
	terminal := "response.completed"
	if end.Status == "incomplete" {
		terminal = "response.incomplete"
	}
	add(terminal, respEvent{end})

	errFrame := responseEvent("error", max(c.k.errorAfter, 0), struct {
		Code    string  `json:"code"`
		Message string  `json:"message"`
		Param   *string `json:"param"`
	}{"server_error", "The server had an error while processing your request. Sorry about that!", nil})
	complete, finalSent := false, false
	disconnect := s.play(frames, errFrame, func(i int) {
		if i == len(frames)-1 {
			complete = true
			if !c.k.noUsage {
				entry.Usage = []json.RawMessage{marshal(rp.usage)}
				entry.Reported = entry.Computed
				finalSent = true
			}
		}
	})
	entry.Cut = !c.k.noUsage && !finalSent
	entry.Complete = complete
	p.ledger.add(entry)
	if disconnect {
		s.abort()
	}
}
