package mockprovider

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Anthropic wire types. Field order follows real responses (model first).
type anthUsage struct {
	InputTokens              int64             `json:"input_tokens"`
	CacheCreationInputTokens int64             `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64             `json:"cache_read_input_tokens"`
	CacheCreation            anthCacheCreation `json:"cache_creation"`
	OutputTokens             int64             `json:"output_tokens"`
	ServiceTier              string            `json:"service_tier"`
}

type anthCacheCreation struct {
	Ephemeral5m int64 `json:"ephemeral_5m_input_tokens"`
	Ephemeral1h int64 `json:"ephemeral_1h_input_tokens"`
}

type anthDeltaUsage struct {
	InputTokens              int64 `json:"input_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
}

type anthText struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type anthMessage struct {
	Model        string     `json:"model"`
	ID           string     `json:"id"`
	Type         string     `json:"type"`
	Role         string     `json:"role"`
	Content      []anthText `json:"content"`
	StopReason   *string    `json:"stop_reason"`
	StopSequence *string    `json:"stop_sequence"`
	Usage        *anthUsage `json:"usage,omitempty"`
}

// anthCall is the per-request context shared by the Anthropic handlers.
type anthCall struct {
	id   string
	seed uint64
	now  time.Time
	k    knobs
}

// beginAnthropic sets the identity headers and runs the checks every
// Anthropic endpoint shares: method, auth, knobs, body, scripted status.
func (p *Provider) beginAnthropic(w http.ResponseWriter, r *http.Request) (*anthCall, []byte, bool) {
	seed := p.requestSeed(r)
	c := &anthCall{id: "req_011C" + idString(seed, base58, 20), seed: seed, now: p.opts.Now()}
	h := w.Header()
	h.Set("request-id", c.id)
	h.Set("anthropic-organization-id", p.opts.OrganizationID)
	if r.Method != http.MethodPost {
		p.anthropicError(w, c, http.StatusMethodNotAllowed, "Method Not Allowed", "")
		return nil, nil, false
	}
	if !p.anthropicAuth(w, r, c) {
		return nil, nil, false
	}
	k, err := parseKnobs(r.Header)
	if err != nil {
		p.anthropicError(w, c, http.StatusBadRequest, err.Error(), "")
		return nil, nil, false
	}
	c.k = k
	body, err := readBody(w, r, p.opts.MaxBodyBytes)
	if err != nil {
		if errors.Is(err, errBodyTooLarge) {
			p.anthropicError(w, c, http.StatusRequestEntityTooLarge, "Request exceeds the maximum allowed number of bytes.", "")
		} else {
			p.anthropicError(w, c, http.StatusBadRequest, "could not read the request body", "")
		}
		return nil, nil, false
	}
	if k.status != 0 {
		p.scriptedAnthropic(w, c)
		return nil, nil, false
	}
	return c, body, true
}

func (p *Provider) anthropicAuth(w http.ResponseWriter, r *http.Request, c *anthCall) bool {
	key := r.Header.Get("x-api-key")
	if key == "" {
		if a := r.Header.Get("authorization"); strings.HasPrefix(a, "Bearer ") && len(a) > len("Bearer ") {
			key = a[len("Bearer "):]
		}
	}
	switch {
	case key == "":
		p.anthropicError(w, c, http.StatusUnauthorized, "x-api-key header is required", "")
		return false
	case r.Header.Get("anthropic-version") == "":
		p.anthropicError(w, c, http.StatusUnauthorized, "anthropic-version header is required", "")
		return false
	}
	return true
}

func (p *Provider) scriptedAnthropic(w http.ResponseWriter, c *anthCall) {
	retry := ""
	switch {
	case c.k.retryAfter >= 0:
		retry = itoa(c.k.retryAfter)
	case c.k.status == http.StatusTooManyRequests:
		retry = "1"
	}
	_, msg := anthropicErrorType(c.k.status)
	p.anthropicError(w, c, c.k.status, msg, retry)
}

// anthropicErrorType maps a status to the error type and a stock message,
// following the Anthropic errors page.
func anthropicErrorType(status int) (typ, msg string) {
	switch status {
	case 400:
		return "invalid_request_error", "Invalid request."
	case 401:
		return "authentication_error", "invalid x-api-key"
	case 402:
		return "billing_error", "Your credit balance is too low to access the Anthropic API."
	case 403:
		return "permission_error", "Your API key does not have permission to use the specified resource."
	case 404:
		return "not_found_error", "The requested resource could not be found."
	case 409:
		return "conflict_error", "Conflict."
	case 413:
		return "request_too_large", "Request exceeds the maximum allowed number of bytes."
	case 429:
		return "rate_limit_error", "This request would exceed the rate limit for your organization. Please try again later."
	case 504:
		return "timeout_error", "Request timed out."
	case 529:
		return "overloaded_error", "Overloaded"
	}
	if status >= 500 {
		return "api_error", "Internal server error"
	}
	return "invalid_request_error", http.StatusText(status)
}

type anthErrorBody struct {
	Type      string         `json:"type"`
	Error     anthErrorInner `json:"error"`
	RequestID string         `json:"request_id"`
}

type anthErrorInner struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

func (p *Provider) anthropicError(w http.ResponseWriter, c *anthCall, status int, msg, retryAfter string) {
	typ, _ := anthropicErrorType(status)
	p.anthLimit.peek(c.now).setAnthropic(w.Header())
	if retryAfter != "" {
		w.Header().Set("retry-after", retryAfter)
	}
	writeJSON(w, status, anthErrorBody{Type: "error", Error: anthErrorInner{Type: typ, Message: msg}, RequestID: c.id})
}

// requestFailure writes a parse or validation error in the Anthropic shape.
func (p *Provider) anthropicRequestFailure(w http.ResponseWriter, c *anthCall, err error) {
	var re *requestError
	if errors.As(err, &re) {
		p.anthropicError(w, c, http.StatusBadRequest, err.Error(), "")
		return
	}
	p.anthropicError(w, c, http.StatusInternalServerError, "Internal server error", "")
}

// anthropicPrompt runs the shared preamble and parses the body; ok is false
// when a response has already been written.
func (p *Provider) anthropicPrompt(w http.ResponseWriter, r *http.Request, needMaxTokens bool) (*anthCall, *flatPrompt, bool) {
	c, body, ok := p.beginAnthropic(w, r)
	if !ok {
		return nil, nil, false
	}
	f, err := parseAnthropic(body, needMaxTokens, p.opts)
	if err != nil {
		p.anthropicRequestFailure(w, c, err)
		return nil, nil, false
	}
	if !p.knownModel(f.model) {
		p.anthropicError(w, c, http.StatusNotFound, "model: "+f.model, "")
		return nil, nil, false
	}
	return c, f, true
}

func (p *Provider) handleCountTokens(w http.ResponseWriter, r *http.Request) {
	c, f, ok := p.anthropicPrompt(w, r, false)
	if !ok {
		return
	}
	if _, err := resolveBreakpoints(f); err != nil {
		p.anthropicRequestFailure(w, c, err)
		return
	}
	p.anthLimit.peek(c.now).setAnthropic(w.Header())
	writeJSON(w, http.StatusOK, struct {
		InputTokens int64 `json:"input_tokens"`
	}{f.total()})
}

func (p *Provider) handleMessages(w http.ResponseWriter, r *http.Request) {
	c, f, ok := p.anthropicPrompt(w, r, true)
	if !ok {
		return
	}
	plan, err := p.cache.plan(f, c.now, p.opts)
	if err != nil {
		p.anthropicRequestFailure(w, c, err)
		return
	}
	out, capped := outputPlan(f.lastUser, c.k.outputTokens, f.maxTokens)
	cu := plan.usage
	// Cache reads do not count towards input-token limits (Anthropic's rule).
	state, wait, admitted := p.anthLimit.take(c.now, cu.input+cu.write5m+cu.write1h, out, p.opts.Enforce)
	if !admitted {
		p.anthropicError(w, c, http.StatusTooManyRequests,
			"This request would exceed the rate limit for your organization. Please try again later.", retryAfterSeconds(wait))
		return
	}
	p.cache.commit(plan, c.now)
	state.setAnthropic(w.Header())

	usage := anthUsage{
		InputTokens: cu.input, CacheCreationInputTokens: cu.write5m + cu.write1h, CacheReadInputTokens: cu.read,
		CacheCreation: anthCacheCreation{Ephemeral5m: cu.write5m, Ephemeral1h: cu.write1h},
		OutputTokens:  out, ServiceTier: c.k.tier("standard"),
	}
	stop := "end_turn"
	if capped {
		stop = "max_tokens"
	}
	reply := anthReply{
		model: f.model, msgID: "msg_01" + idString(c.seed^0x5eed, base58, 22), stop: stop,
		words: words(c.seed, out), usage: usage,
	}
	entry := LedgerEntry{
		RequestID: c.id, Model: f.model, Dialect: DialectAnthropic, Stream: f.stream,
		Computed: anthTokens(usage), NoUsage: c.k.noUsage, ServiceTier: usage.ServiceTier,
	}
	if f.stream {
		p.streamAnthropic(w, r, c, reply, entry)
		return
	}
	msg := anthMessage{
		Model: reply.model, ID: reply.msgID, Type: "message", Role: "assistant",
		Content: []anthText{}, StopReason: &reply.stop,
	}
	if len(reply.words) > 0 {
		msg.Content = append(msg.Content, anthText{Type: "text", Text: strings.Join(reply.words, " ")})
	}
	if !c.k.noUsage {
		msg.Usage = &usage
		entry.Usage = []json.RawMessage{marshal(usage)}
		entry.Reported = entry.Computed
	}
	entry.Complete = true // a JSON body is written in one piece
	p.ledger.add(entry)
	writeJSON(w, http.StatusOK, msg)
}

// anthReply is the generated assistant turn.
type anthReply struct {
	model, msgID, stop string
	words              []string
	usage              anthUsage
}

func anthTokens(u anthUsage) Tokens {
	return Tokens{
		InputTokens: u.InputTokens, OutputTokens: u.OutputTokens, CacheReadTokens: u.CacheReadInputTokens,
		CacheWrite5mTokens: u.CacheCreation.Ephemeral5m, CacheWrite1hTokens: u.CacheCreation.Ephemeral1h,
	}
}

// anthFrame is one SSE event with the usage it carries, for the ledger.
type anthFrame struct {
	bytes []byte
	start *anthUsage      // message_start usage
	delta *anthDeltaUsage // message_delta usage (the final one)
}

const anthropicStreamError = `{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}`

func (p *Provider) streamAnthropic(w http.ResponseWriter, r *http.Request, c *anthCall, reply anthReply, entry LedgerEntry) {
	h := w.Header()
	h.Set("content-type", "text/event-stream; charset=utf-8")
	h.Set("cache-control", "no-cache")
	w.WriteHeader(http.StatusOK)
	s := newStreamer(w, r, c.k, fnvHash([]byte(c.id)))
	frames := p.anthropicFrames(s, c, reply)

	finalSent := false
	var merged *anthUsage
	raw := make([][]byte, len(frames))
	for i, fr := range frames {
		raw[i] = fr.bytes
	}
	complete := false
	disconnect := s.play(raw, namedEvent("error", []byte(anthropicStreamError)), func(i int) {
		complete = i == len(frames)-1
		fr := frames[i]
		if fr.start != nil {
			u := *fr.start
			merged = &u
			entry.Usage = append(entry.Usage, marshal(u))
		}
		if fr.delta != nil {
			// The SDKs overwrite message_start's fields with message_delta's;
			// the TTL split exists only on message_start, so a larger delta
			// total is attributed to the 5m TTL.
			if merged == nil {
				merged = &anthUsage{}
			}
			merged.InputTokens = fr.delta.InputTokens
			merged.CacheReadInputTokens = fr.delta.CacheReadInputTokens
			merged.OutputTokens = fr.delta.OutputTokens
			if extra := fr.delta.CacheCreationInputTokens - merged.CacheCreation.Ephemeral5m - merged.CacheCreation.Ephemeral1h; extra > 0 {
				merged.CacheCreation.Ephemeral5m += extra
			}
			merged.CacheCreationInputTokens = fr.delta.CacheCreationInputTokens
			entry.Usage = append(entry.Usage, marshal(*fr.delta))
			finalSent = true
		}
	})
	if merged != nil {
		entry.Reported = anthTokens(*merged)
	}
	entry.Cut = !finalSent && !c.k.noUsage
	entry.Complete = complete
	p.ledger.add(entry)
	if disconnect {
		s.abort()
	}
}

// anthropicFrames builds the whole event sequence up front; padding comes
// from the streamer's seeded generator so it is reproducible per request id.
func (p *Provider) anthropicFrames(s *streamer, c *anthCall, reply anthReply) []anthFrame {
	var frames []anthFrame
	add := func(name string, v any, fr anthFrame) {
		fr.bytes = namedEvent(name, s.pad(marshal(v)))
		frames = append(frames, fr)
	}
	ping := anthFrame{bytes: namedEvent("ping", []byte(`{"type": "ping"}`))}

	start := reply.usage
	start.OutputTokens = 1 + int64(c.seed%2) // placeholder, as the real API sends
	if c.k.usageOnDelta {
		start = anthUsage{ServiceTier: reply.usage.ServiceTier}
	}
	msg := anthMessage{Model: reply.model, ID: reply.msgID, Type: "message", Role: "assistant", Content: []anthText{}}
	startFrame := anthFrame{}
	if !c.k.noUsage {
		msg.Usage = &start
		startFrame.start = &start
	}
	add("message_start", struct {
		Type    string      `json:"type"`
		Message anthMessage `json:"message"`
	}{"message_start", msg}, startFrame)

	if len(reply.words) == 0 {
		frames = append(frames, ping)
	} else {
		add("content_block_start", struct {
			Type         string   `json:"type"`
			Index        int      `json:"index"`
			ContentBlock anthText `json:"content_block"`
		}{"content_block_start", 0, anthText{Type: "text"}}, anthFrame{})
		frames = append(frames, ping)
		type textDelta struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		for _, t := range deltaTexts(c.seed, reply.words) {
			add("content_block_delta", struct {
				Type  string    `json:"type"`
				Index int       `json:"index"`
				Delta textDelta `json:"delta"`
			}{"content_block_delta", 0, textDelta{"text_delta", t}}, anthFrame{})
		}
		add("content_block_stop", struct {
			Type  string `json:"type"`
			Index int    `json:"index"`
		}{"content_block_stop", 0}, anthFrame{})
	}

	type deltaBody struct {
		StopReason   string  `json:"stop_reason"`
		StopSequence *string `json:"stop_sequence"`
	}
	u := reply.usage
	final := anthDeltaUsage{
		InputTokens: u.InputTokens, CacheCreationInputTokens: u.CacheCreationInputTokens,
		CacheReadInputTokens: u.CacheReadInputTokens, OutputTokens: u.OutputTokens,
	}
	deltaFrame := anthFrame{}
	var usage *anthDeltaUsage
	if !c.k.noUsage {
		usage, deltaFrame.delta = &final, &final
	}
	add("message_delta", struct {
		Type  string          `json:"type"`
		Delta deltaBody       `json:"delta"`
		Usage *anthDeltaUsage `json:"usage,omitempty"`
	}{"message_delta", deltaBody{StopReason: reply.stop}, usage}, deltaFrame)
	add("message_stop", struct {
		Type string `json:"type"`
	}{"message_stop"}, anthFrame{})
	return frames
}

func (p *Provider) anthropicModels(w http.ResponseWriter, r *http.Request, models []string, created time.Time) {
	c := &anthCall{id: "req_011C" + idString(p.nextID(), base58, 20), now: p.opts.Now()}
	w.Header().Set("request-id", c.id)
	w.Header().Set("anthropic-organization-id", p.opts.OrganizationID)
	if r.Method != http.MethodGet {
		p.anthropicError(w, c, http.StatusMethodNotAllowed, "Method Not Allowed", "")
		return
	}
	if !p.anthropicAuth(w, r, c) {
		return
	}
	type model struct {
		Type        string `json:"type"`
		ID          string `json:"id"`
		DisplayName string `json:"display_name"`
		CreatedAt   string `json:"created_at"`
	}
	data := []model{}
	for _, m := range models {
		if strings.HasPrefix(m, "claude") {
			data = append(data, model{"model", m, m, created.Format(time.RFC3339)})
		}
	}
	first, last := "", ""
	if len(data) > 0 {
		first, last = data[0].ID, data[len(data)-1].ID
	}
	p.anthLimit.peek(c.now).setAnthropic(w.Header())
	writeJSON(w, http.StatusOK, struct {
		Data    []model `json:"data"`
		HasMore bool    `json:"has_more"`
		FirstID string  `json:"first_id"`
		LastID  string  `json:"last_id"`
	}{data, false, first, last})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
