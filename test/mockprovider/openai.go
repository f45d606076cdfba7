package mockprovider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// openaiRequest is the part of a Chat Completions request the mock reads.
type openaiRequest struct {
	Model               string            `json:"model"`
	Messages            []openaiMessage   `json:"messages"`
	MaxTokens           *int64            `json:"max_tokens"`
	MaxCompletionTokens *int64            `json:"max_completion_tokens"`
	Stream              bool              `json:"stream"`
	StreamOptions       *oaiStreamOptions `json:"stream_options"`
	Tools               []json.RawMessage `json:"tools"`
	PromptCacheOptions  *oaiCacheOptions  `json:"prompt_cache_options"`
}

type oaiStreamOptions struct {
	IncludeUsage       bool  `json:"include_usage"`
	IncludeObfuscation *bool `json:"include_obfuscation"`
}

type openaiMessage struct {
	Role      string          `json:"role"`
	Content   json.RawMessage `json:"content"`
	Name      string          `json:"name"`
	ToolCalls json.RawMessage `json:"tool_calls"`
}

// oaiRequestError is a 400 in OpenAI's shape, with param and code.
type oaiRequestError struct {
	msg, param, code string
}

func (e *oaiRequestError) Error() string { return e.msg }

// reasoningModel matches the o-series and gpt-5 families, which reject the
// deprecated max_tokens.
var reasoningModel = regexp.MustCompile(`^(o[1-9]|gpt-5)`)

// openaiPrompt is a parsed Chat Completions request.
type openaiPrompt struct {
	model        string
	promptTokens int64
	lastUser     []byte
	maxTokens    int64 // -1: none
	stream       bool
	includeUsage bool
	obfuscate    bool
	// prefixes are the prompt's cacheable prefixes, message by message.
	prefixes []oaiPrefix
	// breakpoints are its explicit prompt-cache breakpoints, on a model
	// that takes them, of which the latest counted are written.
	breakpoints []oaiBreakpoint
	counted     int
}

// parseOpenAI validates a Chat Completions body and counts its prompt by the
// package's token rule.
func parseOpenAI(body []byte, opts Options) (*openaiPrompt, error) {
	var req openaiRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, &oaiRequestError{msg: "We could not parse the JSON body of your request. " +
			"(HINT: This likely means you aren't using your HTTP library correctly.)"}
	}
	if req.Model == "" {
		return nil, &oaiRequestError{msg: "you must provide a model parameter", param: "model"}
	}
	if req.Messages == nil {
		return nil, &oaiRequestError{msg: "Missing required parameter: 'messages'.", param: "messages", code: "missing_required_parameter"}
	}
	if len(req.Messages) == 0 {
		return nil, &oaiRequestError{msg: "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
			param: "messages", code: "empty_array"}
	}
	p := &openaiPrompt{model: req.Model, maxTokens: -1, stream: req.Stream, obfuscate: true}
	if req.MaxTokens != nil && reasoningModel.MatchString(req.Model) {
		return nil, &oaiRequestError{msg: "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
			param: "max_tokens", code: "unsupported_parameter"}
	}
	for _, mt := range []struct {
		v    *int64
		name string
	}{{req.MaxTokens, "max_tokens"}, {req.MaxCompletionTokens, "max_completion_tokens"}} {
		if mt.v == nil {
			continue
		}
		if *mt.v < 1 {
			return nil, &oaiRequestError{msg: fmt.Sprintf("Invalid '%s': integer below minimum value. Expected a value >= 1, but got %d instead.", mt.name, *mt.v),
				param: mt.name, code: "integer_below_min_value"}
		}
		p.maxTokens = *mt.v // max_completion_tokens, listed last, wins
	}
	if req.StreamOptions != nil {
		if !req.Stream {
			return nil, &oaiRequestError{msg: "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
				param: "stream_options", code: "invalid_value"}
		}
		p.includeUsage = req.StreamOptions.IncludeUsage
		if req.StreamOptions.IncludeObfuscation != nil {
			p.obfuscate = *req.StreamOptions.IncludeObfuscation
		}
	}
	// The messages and tools exactly as sent, for the prompt-cache prefixes.
	var raw struct {
		Messages []json.RawMessage `json:"messages"`
		Tools    []json.RawMessage `json:"tools"`
	}
	if err := json.Unmarshal(body, &raw); err != nil || len(raw.Messages) != len(req.Messages) {
		return nil, &oaiRequestError{msg: "We could not parse the JSON body of your request."}
	}
	var (
		toolsTokens int64
		err         error
	)
	for _, t := range req.Tools {
		toolsTokens += ceilTokens(len(t))
	}
	messageTokens := make([]int64, len(req.Messages))
	for i, m := range req.Messages {
		switch m.Role {
		case "system", "developer", "user", "assistant", "tool", "function":
		default:
			return nil, &oaiRequestError{msg: fmt.Sprintf("Invalid value: '%s'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.", m.Role),
				param: fmt.Sprintf("messages[%d].role", i), code: "invalid_value"}
		}
		n, err := openaiContentTokens(m.Content, opts.ImageTokens)
		if err != nil {
			return nil, &oaiRequestError{msg: fmt.Sprintf("Invalid 'messages[%d].content': %v", i, err), param: fmt.Sprintf("messages[%d].content", i)}
		}
		messageTokens[i] = opts.MessageOverhead + n + ceilTokens(len(m.Name)) + ceilTokens(len(bytes.TrimSpace(m.ToolCalls)))
		p.promptTokens += messageTokens[i]
		if m.Role == "user" {
			p.lastUser = m.Content
		}
	}
	p.promptTokens += toolsTokens
	p.prefixes = oaiPrefixes(req.Model, raw.Tools, raw.Messages, messageTokens, toolsTokens)
	if takesBreakpoints(req.Model) {
		if p.counted, err = req.PromptCacheOptions.counted(); err != nil {
			return nil, err
		}
		w := newBPWalker(req.Model, raw.Tools, toolsTokens, chatBreakpointParts, opts.ImageTokens)
		for i, m := range raw.Messages {
			if err := w.message(m, messageTokens[i], opts.MessageOverhead, fmt.Sprintf("messages[%d]", i)); err != nil {
				return nil, err
			}
		}
		p.breakpoints = w.bps
	}
	p.promptTokens += 3 // the assistant reply's priming, as OpenAI's counting guide does
	if p.lastUser == nil {
		p.lastUser = body
	}
	return p, nil
}

func openaiContentTokens(raw json.RawMessage, imageTokens int64) (int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return 0, nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, fmt.Errorf("not a string: %w", err)
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
		case part.Type == "text" && part.Text != nil:
			n += ceilTokens(len(*part.Text))
		case part.Type == "refusal":
		default:
			n += imageTokens // image_url, input_audio, file
		}
	}
	return n, nil
}

// OpenAI wire types, in the field order of real responses.
type oaiUsage struct {
	PromptTokens            int64              `json:"prompt_tokens"`
	CompletionTokens        int64              `json:"completion_tokens"`
	TotalTokens             int64              `json:"total_tokens"`
	PromptTokensDetails     oaiPromptDetails   `json:"prompt_tokens_details"`
	CompletionTokensDetails oaiCompletionDetls `json:"completion_tokens_details"`
}

type oaiPromptDetails struct {
	CachedTokens int64 `json:"cached_tokens"`
	AudioTokens  int64 `json:"audio_tokens"`
	// CacheWriteTokens is reported where explicit breakpoints wrote the
	// cache (gpt-5.6 and later), within prompt_tokens.
	CacheWriteTokens int64 `json:"cache_write_tokens,omitempty"`
}

type oaiCompletionDetls struct {
	ReasoningTokens          int64 `json:"reasoning_tokens"`
	AudioTokens              int64 `json:"audio_tokens"`
	AcceptedPredictionTokens int64 `json:"accepted_prediction_tokens"`
	RejectedPredictionTokens int64 `json:"rejected_prediction_tokens"`
}

func oaiTokens(u oaiUsage) Tokens {
	return Tokens{
		InputTokens:        u.PromptTokens - u.PromptTokensDetails.CachedTokens - u.PromptTokensDetails.CacheWriteTokens,
		CacheReadTokens:    u.PromptTokensDetails.CachedTokens,
		CacheWrite5mTokens: u.PromptTokensDetails.CacheWriteTokens,
		OutputTokens:       u.CompletionTokens,
	}
}

type oaiCall struct {
	id    string
	seed  uint64
	now   time.Time
	start time.Time
	k     knobs
}

func (p *Provider) handleChat(w http.ResponseWriter, r *http.Request) {
	seed := p.requestSeed(r)
	c := &oaiCall{id: "req_" + idString(seed, "0123456789abcdef", 32), seed: seed, now: p.opts.Now(), start: time.Now()}
	h := w.Header()
	h.Set("x-request-id", c.id)
	h.Set("openai-version", "2020-10-01")
	h.Set("openai-organization", "user-mockprovider")
	if r.Method != http.MethodPost {
		p.openaiError(w, c, http.StatusMethodNotAllowed, oaiErrorInner{Message: "Method Not Allowed", Type: "invalid_request_error"}, "")
		return
	}
	if !p.openaiAuth(w, r, c) {
		return
	}
	k, err := parseKnobs(r.Header)
	if err != nil {
		p.openaiError(w, c, http.StatusBadRequest, oaiErrorInner{Message: err.Error(), Type: "invalid_request_error"}, "")
		return
	}
	c.k = k
	body, err := readBody(w, r, p.opts.MaxBodyBytes)
	if err != nil {
		status, msg := http.StatusBadRequest, "could not read the request body"
		if errors.Is(err, errBodyTooLarge) {
			status, msg = http.StatusRequestEntityTooLarge, "Request too large."
		}
		p.openaiError(w, c, status, oaiErrorInner{Message: msg, Type: "invalid_request_error"}, "")
		return
	}
	if k.status != 0 {
		p.scriptedOpenAI(w, c)
		return
	}
	req, err := parseOpenAI(body, p.opts)
	if err != nil {
		var oe *oaiRequestError
		if !errors.As(err, &oe) {
			oe = &oaiRequestError{msg: err.Error()}
		}
		p.openaiError(w, c, http.StatusBadRequest, oaiErrorInner{Message: oe.msg, Type: "invalid_request_error", Param: strPtr(oe.param), Code: strPtr(oe.code)}, "")
		return
	}
	if !p.knownModel(req.model) {
		p.openaiError(w, c, http.StatusNotFound, oaiErrorInner{
			Message: fmt.Sprintf("The model `%s` does not exist or you do not have access to it.", req.model),
			Type:    "invalid_request_error", Code: strPtr("model_not_found"),
		}, "")
		return
	}
	out, capped := outputPlan(req.lastUser, k.outputTokens, req.maxTokens)
	var cached, written int64
	var cachePlan cachePlan
	if len(req.breakpoints) > 0 {
		cached, written, cachePlan = p.cache.planExplicit(req.breakpoints, req.counted, c.now)
	} else {
		cached, cachePlan = p.cache.planOpenAI(req.prefixes, c.now)
	}
	state, wait, admitted := p.oaiLimit.take(c.now, req.promptTokens, out, p.opts.Enforce)
	if !admitted {
		p.openaiError(w, c, http.StatusTooManyRequests, oaiErrorInner{
			Message: fmt.Sprintf("Rate limit reached for %s on tokens per min (TPM). Please try again in %s.", req.model, wait.Round(time.Millisecond)),
			Type:    "tokens", Code: strPtr("rate_limit_exceeded"),
		}, retryAfterSeconds(wait))
		return
	}
	p.cache.commit(cachePlan, c.now) // only an admitted request warms the cache
	state.setOpenAI(h)
	usage := oaiUsage{PromptTokens: req.promptTokens, CompletionTokens: out, TotalTokens: req.promptTokens + out,
		PromptTokensDetails: oaiPromptDetails{CachedTokens: cached, CacheWriteTokens: written}}
	finish := "stop"
	if capped {
		finish = "length"
	}
	reply := oaiReply{
		id: "chatcmpl-" + idString(c.seed^0xc4a7, base58, 29), model: req.model, created: c.now.Unix(),
		finish: finish, words: words(c.seed, out), usage: usage,
	}
	entry := LedgerEntry{
		RequestID: c.id, Model: req.model, Dialect: DialectOpenAI, Stream: req.stream,
		Computed: oaiTokens(usage), NoUsage: k.noUsage, ServiceTier: k.tier("default"), Breakpoints: len(req.breakpoints),
	}
	if req.stream {
		p.streamOpenAI(w, r, c, req, reply, entry)
		return
	}
	h.Set("openai-processing-ms", processingMS(c.start))
	text := strings.Join(reply.words, " ")
	type message struct {
		Role        string   `json:"role"`
		Content     string   `json:"content"`
		Refusal     *string  `json:"refusal"`
		Annotations []string `json:"annotations"`
	}
	type choice struct {
		Index        int             `json:"index"`
		Message      message         `json:"message"`
		Logprobs     json.RawMessage `json:"logprobs"`
		FinishReason string          `json:"finish_reason"`
	}
	resp := struct {
		ID                string    `json:"id"`
		Object            string    `json:"object"`
		Created           int64     `json:"created"`
		Model             string    `json:"model"`
		Choices           []choice  `json:"choices"`
		Usage             *oaiUsage `json:"usage,omitempty"`
		ServiceTier       string    `json:"service_tier"`
		SystemFingerprint *string   `json:"system_fingerprint"`
	}{
		ID: reply.id, Object: "chat.completion", Created: reply.created, Model: reply.model,
		Choices: []choice{{Message: message{Role: "assistant", Content: text, Annotations: []string{}},
			Logprobs: json.RawMessage("null"), FinishReason: finish}},
		ServiceTier: k.tier("default"),
	}
	if !k.noUsage {
		resp.Usage = &usage
		entry.Usage = []json.RawMessage{marshal(usage)}
		entry.Reported = entry.Computed
	}
	entry.Complete = true // a JSON body is written in one piece
	p.ledger.add(entry)
	writeJSON(w, http.StatusOK, resp)
}

type oaiReply struct {
	id, model, finish string
	created           int64
	words             []string
	usage             oaiUsage
}

func processingMS(start time.Time) string {
	return strconv.FormatInt(time.Since(start).Milliseconds(), 10)
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func (p *Provider) openaiAuth(w http.ResponseWriter, r *http.Request, c *oaiCall) bool {
	a := r.Header.Get("authorization")
	if strings.HasPrefix(a, "Bearer ") && strings.TrimSpace(a[len("Bearer "):]) != "" {
		return true
	}
	p.openaiError(w, c, http.StatusUnauthorized, oaiErrorInner{
		Message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
		Type:    "invalid_request_error",
	}, "")
	return false
}

type oaiErrorInner struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func (p *Provider) openaiError(w http.ResponseWriter, c *oaiCall, status int, e oaiErrorInner, retryAfter string) {
	h := w.Header()
	p.oaiLimit.peek(c.now).setOpenAI(h)
	if retryAfter != "" {
		h.Set("retry-after", retryAfter)
	}
	h.Set("openai-processing-ms", processingMS(c.start))
	writeJSON(w, status, struct {
		Error oaiErrorInner `json:"error"`
	}{e})
}

// openaiScripted maps a scripted status to OpenAI's error type and code.
func openaiScripted(status int) oaiErrorInner {
	switch {
	case status == 401:
		return oaiErrorInner{Message: "Incorrect API key provided.", Type: "invalid_request_error", Code: strPtr("invalid_api_key")}
	case status == 404:
		return oaiErrorInner{Message: "The model does not exist or you do not have access to it.", Type: "invalid_request_error", Code: strPtr("model_not_found")}
	case status == 429:
		return oaiErrorInner{Message: "Rate limit reached on tokens per min (TPM). Please try again later.", Type: "tokens", Code: strPtr("rate_limit_exceeded")}
	case status == 503 || status == 529:
		return oaiErrorInner{Message: "The server is overloaded or not ready yet.", Type: "server_error"}
	case status >= 500:
		return oaiErrorInner{Message: "The server had an error while processing your request. Sorry about that!", Type: "server_error"}
	}
	return oaiErrorInner{Message: http.StatusText(status), Type: "invalid_request_error"}
}

func (p *Provider) scriptedOpenAI(w http.ResponseWriter, c *oaiCall) {
	retry := ""
	switch {
	case c.k.retryAfter >= 0:
		retry = itoa(c.k.retryAfter)
	case c.k.status == http.StatusTooManyRequests:
		retry = "1"
	}
	p.openaiError(w, c, c.k.status, openaiScripted(c.k.status), retry)
}

const openaiStreamError = `{"error":{"message":"The server is overloaded or not ready yet.","type":"server_error","param":null,"code":null}}`

const obfuscationAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

func (p *Provider) streamOpenAI(w http.ResponseWriter, r *http.Request, c *oaiCall, req *openaiPrompt, reply oaiReply, entry LedgerEntry) {
	h := w.Header()
	h.Set("content-type", "text/event-stream; charset=utf-8")
	h.Set("openai-processing-ms", processingMS(c.start))
	w.WriteHeader(http.StatusOK)
	s := newStreamer(w, r, c.k, fnvHash([]byte(c.id)))

	type chunk struct {
		ID                string          `json:"id"`
		Object            string          `json:"object"`
		Created           int64           `json:"created"`
		Model             string          `json:"model"`
		ServiceTier       string          `json:"service_tier"`
		SystemFingerprint *string         `json:"system_fingerprint"`
		Choices           []any           `json:"choices"`
		Usage             json.RawMessage `json:"usage,omitempty"`
		Obfuscation       string          `json:"obfuscation,omitempty"`
	}
	type firstDelta struct {
		Role    string  `json:"role"`
		Content string  `json:"content"`
		Refusal *string `json:"refusal"`
	}
	type textDelta struct {
		Content string `json:"content"`
	}
	type choice struct {
		Index        int     `json:"index"`
		Delta        any     `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	}
	type frame struct {
		bytes []byte
		usage json.RawMessage
	}
	var frames []frame
	add := func(choices []any, usage json.RawMessage) {
		ch := chunk{ID: reply.id, Object: "chat.completion.chunk", Created: reply.created, Model: reply.model,
			ServiceTier: c.k.tier("default"), Choices: choices}
		if req.includeUsage {
			ch.Usage = json.RawMessage("null")
		}
		if usage != nil {
			ch.Usage = usage
		}
		if req.obfuscate {
			ch.Obfuscation = s.rand.text(obfuscationAlphabet, 1+s.rand.intn(16))
		}
		frames = append(frames, frame{bytes: dataEvent(marshal(ch)), usage: usage})
	}
	add([]any{choice{Delta: firstDelta{Role: "assistant"}}}, nil)
	for _, t := range deltaTexts(c.seed, reply.words) {
		add([]any{choice{Delta: textDelta{t}}}, nil)
	}
	add([]any{choice{Delta: struct{}{}, FinishReason: &reply.finish}}, nil)
	if req.includeUsage && !c.k.noUsage {
		add([]any{}, marshal(reply.usage))
	}
	frames = append(frames, frame{bytes: []byte("data: [DONE]\n\n")})

	finalSent := false
	raw := make([][]byte, len(frames))
	for i, fr := range frames {
		raw[i] = fr.bytes
	}
	complete := false
	disconnect := s.play(raw, dataEvent([]byte(openaiStreamError)), func(i int) {
		complete = i == len(frames)-1
		if u := frames[i].usage; u != nil {
			entry.Usage = []json.RawMessage{u}
			entry.Reported = entry.Computed
			finalSent = true
		}
	})
	entry.Cut = req.includeUsage && !c.k.noUsage && !finalSent
	entry.Complete = complete
	p.ledger.add(entry)
	if disconnect {
		s.abort()
	}
}

func (p *Provider) openaiModels(w http.ResponseWriter, r *http.Request, models []string, created time.Time) {
	c := &oaiCall{id: "req_" + idString(p.nextID(), "0123456789abcdef", 32), now: p.opts.Now(), start: time.Now()}
	w.Header().Set("x-request-id", c.id)
	w.Header().Set("openai-version", "2020-10-01")
	if r.Method != http.MethodGet {
		p.openaiError(w, c, http.StatusMethodNotAllowed, oaiErrorInner{Message: "Method Not Allowed", Type: "invalid_request_error"}, "")
		return
	}
	if !p.openaiAuth(w, r, c) {
		return
	}
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	data := []model{}
	for _, m := range models {
		owner := "system"
		if strings.HasPrefix(m, "claude") {
			owner = "anthropic"
		}
		data = append(data, model{m, "model", created.Unix(), owner})
	}
	p.oaiLimit.peek(c.now).setOpenAI(w.Header())
	h := w.Header()
	h.Set("openai-processing-ms", processingMS(c.start))
	writeJSON(w, http.StatusOK, struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{"list", data})
}
