package mockprovider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// The Gemini API's generateContent (https://ai.google.dev/api/generate-content):
// POST /v1beta/models/{model}:generateContent answers one
// GenerateContentResponse; :streamGenerateContent answers a stream of them,
// as SSE (data: lines ended by a blank CRLF line, no [DONE]) with ?alt=sse
// and else as one JSON array written element by element. usageMetadata is
// cumulative on every chunk. Counts follow the token rule (a content is a
// message; inline and file data count ImageTokens); x-mock-cached-tokens
// reports part of the prompt as cachedContentTokenCount (within
// promptTokenCount, as the API's), x-mock-reasoning-tokens thoughtsTokenCount
// (apart from candidatesTokenCount). The model is the path's.

// geminiPrompt is a parsed generateContent request.
type geminiPrompt struct {
	promptTokens int64
	lastUser     []byte
	maxTokens    int64 // -1: none
}

// field reads a member under its lowerCamelCase or proto name, as proto
// JSON parsers accept either.
func field(m map[string]json.RawMessage, camel, snake string) json.RawMessage {
	if v, ok := m[camel]; ok {
		return v
	}
	return m[snake]
}

func parseGemini(body []byte, opts Options) (*geminiPrompt, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, errors.New("Invalid JSON payload received.")
	}
	p := &geminiPrompt{maxTokens: -1}
	var contents []json.RawMessage
	if err := json.Unmarshal(m["contents"], &contents); err != nil || len(contents) == 0 {
		return nil, errors.New("* GenerateContentRequest.contents: contents is not specified")
	}
	count := func(raw json.RawMessage) (int64, error) {
		var c map[string]json.RawMessage
		if err := json.Unmarshal(raw, &c); err != nil {
			return 0, err
		}
		var parts []map[string]json.RawMessage
		if v := c["parts"]; len(v) > 0 && !bytes.Equal(v, []byte("null")) {
			if err := json.Unmarshal(v, &parts); err != nil {
				return 0, err
			}
		}
		n := opts.MessageOverhead
		for _, part := range parts {
			switch {
			case part["text"] != nil:
				var s string
				if err := json.Unmarshal(part["text"], &s); err != nil {
					return 0, err
				}
				n += ceilTokens(len(s))
			case field(part, "inlineData", "inline_data") != nil, field(part, "fileData", "file_data") != nil:
				n += opts.ImageTokens
			default:
				raw, _ := json.Marshal(part)
				n += ceilTokens(len(raw))
			}
		}
		return n, nil
	}
	for i, raw := range contents {
		n, err := count(raw)
		if err != nil {
			return nil, fmt.Errorf("Invalid value at 'contents[%d]'", i)
		}
		p.promptTokens += n
		var role struct {
			Role string `json:"role"`
		}
		_ = json.Unmarshal(raw, &role)
		if role.Role == "" || role.Role == "user" {
			p.lastUser = raw
		}
	}
	if sys := field(m, "systemInstruction", "system_instruction"); len(sys) > 0 && !bytes.Equal(sys, []byte("null")) {
		n, err := count(sys)
		if err != nil {
			return nil, errors.New("Invalid value at 'system_instruction'")
		}
		p.promptTokens += n
	}
	var tools []json.RawMessage
	if v := m["tools"]; len(v) > 0 {
		if err := json.Unmarshal(v, &tools); err != nil {
			return nil, errors.New("Invalid value at 'tools'")
		}
	}
	for _, t := range tools {
		p.promptTokens += ceilTokens(len(t))
	}
	if gc := field(m, "generationConfig", "generation_config"); len(gc) > 0 && !bytes.Equal(gc, []byte("null")) {
		var g map[string]json.RawMessage
		if err := json.Unmarshal(gc, &g); err != nil {
			return nil, errors.New("Invalid value at 'generation_config'")
		}
		if v := field(g, "maxOutputTokens", "max_output_tokens"); v != nil {
			var n int64
			if err := json.Unmarshal(v, &n); err != nil || n < 1 {
				return nil, errors.New("Invalid value at 'generation_config.max_output_tokens'")
			}
			p.maxTokens = n
		}
	}
	if p.lastUser == nil {
		p.lastUser = body
	}
	return p, nil
}

// Gemini wire types, in the field order of real responses; zero counts are
// omitted, as the API omits them.
type gemUsage struct {
	PromptTokenCount        int64        `json:"promptTokenCount"`
	CandidatesTokenCount    int64        `json:"candidatesTokenCount,omitempty"`
	TotalTokenCount         int64        `json:"totalTokenCount"`
	CachedContentTokenCount int64        `json:"cachedContentTokenCount,omitempty"`
	PromptTokensDetails     []gemDetails `json:"promptTokensDetails"`
	ThoughtsTokenCount      int64        `json:"thoughtsTokenCount,omitempty"`
	// TrafficType is Vertex AI's (ON_DEMAND, ON_DEMAND_PRIORITY,
	// ON_DEMAND_FLEX, PROVISIONED_THROUGHPUT); the Gemini API sends none,
	// so it is only there when x-mock-service-tier asks for it.
	TrafficType string `json:"trafficType,omitempty"`
}

type gemDetails struct {
	Modality   string `json:"modality"`
	TokenCount int64  `json:"tokenCount"`
}

func gemTokens(u gemUsage) Tokens {
	return Tokens{
		InputTokens:     u.PromptTokenCount - u.CachedContentTokenCount,
		CacheReadTokens: u.CachedContentTokenCount,
		OutputTokens:    u.CandidatesTokenCount + u.ThoughtsTokenCount,
	}
}

type gemPart struct {
	Text string `json:"text"`
}

type gemContent struct {
	Parts []gemPart `json:"parts"`
	Role  string    `json:"role"`
}

type gemCandidate struct {
	Content      gemContent `json:"content"`
	FinishReason string     `json:"finishReason,omitempty"`
	Index        int        `json:"index"`
}

type gemResponse struct {
	Candidates    []gemCandidate `json:"candidates"`
	UsageMetadata *gemUsage      `json:"usageMetadata,omitempty"`
	ModelVersion  string         `json:"modelVersion"`
	ResponseID    string         `json:"responseId"`
}

// gemStatus is the canonical status name of an HTTP status, as Google's
// error bodies carry it.
func gemStatus(code int) (status, message string) {
	switch code {
	case 400:
		return "INVALID_ARGUMENT", "Request contains an invalid argument."
	case 401:
		return "UNAUTHENTICATED", "Request had invalid authentication credentials."
	case 403:
		return "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API."
	case 404:
		return "NOT_FOUND", "Requested entity was not found."
	case 429:
		return "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."
	case 503:
		return "UNAVAILABLE", "The model is overloaded. Please try again later."
	case 504:
		return "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."
	}
	if code >= 500 {
		return "INTERNAL", "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
	}
	return "FAILED_PRECONDITION", http.StatusText(code)
}

type gemError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Status  string `json:"status"`
}

func gemErrorBody(code int, message string) []byte {
	status, def := gemStatus(code)
	if message == "" {
		message = def
	}
	return marshal(struct {
		Error gemError `json:"error"`
	}{gemError{code, message, status}})
}

func (p *Provider) geminiError(w http.ResponseWriter, code int, message, retryAfter string) {
	if retryAfter != "" {
		w.Header().Set("retry-after", retryAfter)
	}
	body := gemErrorBody(code, message)
	w.Header().Set("content-type", "application/json; charset=UTF-8")
	w.Header().Set("content-length", fmt.Sprint(len(body)))
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

func (p *Provider) handleGemini(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	seed := p.nextID()
	call := r.PathValue("call")
	i := strings.LastIndexByte(call, ':')
	if i <= 0 {
		p.geminiError(w, http.StatusNotFound, "", "")
		return
	}
	model, method := call[:i], call[i+1:]
	stream := method == "streamGenerateContent"
	if !stream && method != "generateContent" {
		p.geminiError(w, http.StatusNotFound, "", "")
		return
	}
	if r.Header.Get("x-goog-api-key") == "" && r.URL.Query().Get("key") == "" {
		p.geminiError(w, http.StatusForbidden, "", "")
		return
	}
	k, err := parseKnobs(r.Header)
	if err != nil {
		p.geminiError(w, http.StatusBadRequest, err.Error(), "")
		return
	}
	body, err := readBody(w, r, p.opts.MaxBodyBytes)
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, errBodyTooLarge) {
			code = http.StatusRequestEntityTooLarge
		}
		p.geminiError(w, code, err.Error(), "")
		return
	}
	if k.status != 0 {
		retry := ""
		switch {
		case k.retryAfter >= 0:
			retry = itoa(k.retryAfter)
		case k.status == http.StatusTooManyRequests:
			retry = "1"
		}
		p.geminiError(w, k.status, "", retry)
		return
	}
	req, err := parseGemini(body, p.opts)
	if err != nil {
		p.geminiError(w, http.StatusBadRequest, err.Error(), "")
		return
	}
	if !p.knownModel(model) {
		p.geminiError(w, http.StatusNotFound, fmt.Sprintf("models/%s is not found for API version v1beta, or is not supported for generateContent.", model), "")
		return
	}
	thoughts := k.reasoningTokens
	maxVisible := req.maxTokens
	if maxVisible >= 0 {
		maxVisible = max(maxVisible-thoughts, 0)
	}
	out, capped := outputPlan(req.lastUser, k.outputTokens, maxVisible)
	now := p.opts.Now()
	if _, wait, ok := p.gemLimit.take(now, req.promptTokens, out+thoughts, p.opts.Enforce); !ok {
		p.geminiError(w, http.StatusTooManyRequests, fmt.Sprintf("You exceeded your current quota. Please retry in %s.", wait.Round(time.Millisecond)), retryAfterSeconds(wait))
		return
	}
	cached := min(k.cachedTokens, req.promptTokens)
	usageAt := func(candidates int64) *gemUsage {
		return &gemUsage{PromptTokenCount: req.promptTokens, CandidatesTokenCount: candidates, TotalTokenCount: req.promptTokens + candidates + thoughts,
			CachedContentTokenCount: cached, PromptTokensDetails: []gemDetails{{"TEXT", req.promptTokens}}, ThoughtsTokenCount: thoughts,
			TrafficType: k.serviceTier}
	}
	finish := "STOP"
	if capped {
		finish = "MAX_TOKENS"
	}
	ws := words(seed, out)
	respID := idString(seed^0x6e6, base58, 23)
	final := usageAt(out)
	entry := LedgerEntry{RequestID: respID, Model: model, Dialect: DialectGemini, Stream: stream, Computed: gemTokens(*final), NoUsage: k.noUsage,
		ServiceTier: k.serviceTier}
	if !stream {
		resp := gemResponse{Candidates: []gemCandidate{{Content: gemContent{Parts: []gemPart{{strings.Join(ws, " ")}}, Role: "model"}, FinishReason: finish}},
			ModelVersion: model, ResponseID: respID}
		if !k.noUsage {
			resp.UsageMetadata = final
			entry.Usage = []json.RawMessage{marshal(final)}
			entry.Reported = entry.Computed
		}
		entry.Complete = true
		p.ledger.add(entry)
		w.Header().Set("server-timing", fmt.Sprintf("gfet4t7; dur=%d", time.Since(start).Milliseconds()))
		writeJSON(w, http.StatusOK, resp)
		return
	}
	p.streamGemini(w, r, k, seed, ws, finish, model, respID, usageAt, entry, r.URL.Query().Get("alt") == "sse")
}

// streamGemini writes the chunks: one per delta, each with the usage so
// far (thoughts are spent before the first), the last with finishReason.
func (p *Provider) streamGemini(w http.ResponseWriter, r *http.Request, k knobs, seed uint64, ws []string, finish, model, respID string,
	usageAt func(int64) *gemUsage, entry LedgerEntry, sse bool) {
	h := w.Header()
	if sse {
		h.Set("content-type", "text/event-stream")
	} else {
		h.Set("content-type", "application/json; charset=UTF-8")
	}
	w.WriteHeader(http.StatusOK)
	s := newStreamer(w, r, k, seed)
	frame := func(i int, data []byte) []byte {
		if sse {
			return append(append([]byte("data: "), data...), "\r\n\r\n"...)
		}
		if i == 0 {
			return append([]byte("["), data...)
		}
		return append([]byte("\n,\r\n"), data...)
	}
	deltas := deltaTexts(seed, ws)
	if len(deltas) == 0 {
		deltas = []string{""}
	}
	var frames [][]byte
	var usages []json.RawMessage
	var sent int64
	for i, d := range deltas {
		sent += int64(len(strings.Fields(d)))
		c := gemCandidate{Content: gemContent{Parts: []gemPart{{d}}, Role: "model"}}
		if i == len(deltas)-1 {
			c.FinishReason = finish
		}
		resp := gemResponse{Candidates: []gemCandidate{c}, ModelVersion: model, ResponseID: respID}
		if !k.noUsage {
			resp.UsageMetadata = usageAt(sent)
		}
		frames = append(frames, frame(i, marshal(resp)))
		if resp.UsageMetadata != nil {
			usages = append(usages, marshal(resp.UsageMetadata))
		} else {
			usages = append(usages, nil)
		}
	}
	if !sse {
		frames = append(frames, []byte("\n]"))
		usages = append(usages, nil)
	}
	errData := gemErrorBody(http.StatusServiceUnavailable, "")
	errFrame := frame(max(k.errorAfter, 0), errData)
	if !sse {
		errFrame = append(errFrame, "\n]"...)
	}
	complete := false
	disconnect := s.play(frames, errFrame, func(i int) {
		if u := usages[i]; u != nil {
			entry.Usage = append(entry.Usage, u)
		}
		complete = i == len(frames)-1
	})
	if n := len(entry.Usage); n > 0 {
		var last gemUsage
		_ = json.Unmarshal(entry.Usage[n-1], &last)
		entry.Reported = gemTokens(last)
	}
	entry.Cut = !k.noUsage && !complete
	entry.Complete = complete
	p.ledger.add(entry)
	if disconnect {
		s.abort()
	}
}
