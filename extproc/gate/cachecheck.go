package gate

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// What is safe to reuse. A request is cacheable when its API is one the
// cache serves (Anthropic Messages, OpenAI Chat Completions, OpenAI
// embeddings) and:
//
//   - it matches one of the policy's shapes; by default temperature
//     explicitly 0 (greedy decoding). top_p and top_k only narrow what
//     greedy decoding already picks, so they are not looked at (they are
//     in the key). A seed alone does not qualify (OpenAI calls it best
//     effort); a shape may ask for one. Embeddings have no sampling and
//     always qualify.
//   - n is absent or 1: n > 1 asks for several different samples;
//   - it names no tool the provider runs itself (Anthropic server tools
//     such as web_search, web_fetch or code_execution, mcp_servers, a
//     container; OpenAI web_search_options): their results are live data.
//     Client tools (custom, function) are fine: the model only proposes
//     the call, and the call is in the answer;
//   - it is not an Anthropic max_tokens 0 request, which exists to warm
//     the provider's prompt cache and must reach it;
//   - it is not a background response.
//
// The Responses API is not served: a response is stateful at the provider
// (store, previous_response_id, background), so replaying one would hand
// two clients one provider-side object. Gemini is not served yet.
//
// The request is read here a second time, top-level fields only and only
// for policies with the cache on; folding these fields into the dialect's
// one pass (wire.Request) is the next step once the dialect work in flight
// has landed.
func cacheability(dialectName string, body []byte, req *wire.Request, shapes []policy.CacheShape) string {
	switch dialectName {
	case "anthropic", "openai":
	case "openai_embeddings":
		return ""
	default:
		return BypassDialect
	}
	if req.Background {
		return BypassBackground
	}
	var (
		r                 wire.Reader
		temp              float64
		hasTemp, hasSeed  bool
		choices, warmup   bool
		serverTools, seen bool
	)
	r.Reset(body)
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		switch string(key) {
		case "temperature":
			if r.Peek() == wire.KindNumber {
				s, e := r.Skip()
				if f, err := strconv.ParseFloat(string(r.Slice(s, e)), 64); err == nil {
					temp, hasTemp = f, true
				}
				continue
			}
		case "seed":
			hasSeed = r.Peek() != wire.KindNull
		case "n":
			if r.Peek() == wire.KindNumber {
				n, isInt := r.Int()
				choices = !isInt || n > 1
				continue
			}
		case "max_tokens":
			if dialectName == "anthropic" && r.Peek() == wire.KindNumber {
				n, isInt := r.Int()
				warmup = isInt && n == 0
				continue
			}
		case "tools":
			if r.Peek() == wire.KindArray {
				serverTools = serverTools || hasServerTool(&r)
				continue
			}
		case "mcp_servers", "container", "web_search_options":
			s, e := r.Skip()
			v := bytes.TrimSpace(r.Slice(s, e))
			serverTools = serverTools || !bytes.Equal(v, []byte("null")) && !bytes.Equal(v, []byte("[]"))
			continue
		}
		r.Skip()
	}
	seen = r.Err() == nil
	switch {
	case !seen:
		return BypassSampling
	case warmup:
		return BypassWarmup
	case choices:
		return BypassChoices
	case serverTools:
		return BypassServerTools
	}
	for _, s := range shapes {
		if s.Seed && !hasSeed {
			continue
		}
		if s.AnyTemperature || hasTemp && temp <= s.MaxTemperature {
			return ""
		}
	}
	return BypassSampling
}

// hasServerTool reads a tools array and reports a tool whose type is one
// the provider runs: anything but none, "custom" (Anthropic) and
// "function" (OpenAI).
func hasServerTool(r *wire.Reader) bool {
	found := false
	arr := r.Array()
	for r.NextElem(&arr) {
		if r.Peek() != wire.KindObject {
			r.Skip()
			continue
		}
		obj := r.Object()
		for key, ok := r.NextKey(&obj); ok; key, ok = r.NextKey(&obj) {
			if string(key) == "type" && r.Peek() == wire.KindString {
				t, _ := r.String()
				found = found || t != "custom" && t != "function" && t != ""
				continue
			}
			r.Skip()
		}
	}
	return found
}

// responseComplete reports why a 2xx answer whose usage was measured is
// not one to replay, or "" when it is: the model finished on its own. A
// stop at max_tokens (length) is not stored — the answer is truncated, and
// users of other gateways' caches complained of being served truncated
// answers again — nor is a refusal or a content-filter stop, a stream
// without its terminal event, or one with an error event.
func responseComplete(dialectName string, stream bool, body []byte) string {
	switch {
	case dialectName == "anthropic" && stream:
		var h anthropicEvents
		dropped := decodeSSE(body, &h)
		switch {
		case h.err:
			return FillUpstreamError
		case !h.stopped || dropped:
			return FillIncomplete
		}
		return anthropicStop(h.stop)
	case dialectName == "anthropic":
		var m struct {
			Type       string  `json:"type"`
			StopReason *string `json:"stop_reason"`
		}
		if json.Unmarshal(body, &m) != nil || m.Type != "message" || m.StopReason == nil {
			return FillIncomplete
		}
		return anthropicStop(*m.StopReason)
	case dialectName == "openai" && stream:
		h := openaiChunks{finish: map[int64]string{}}
		dropped := decodeSSE(body, &h)
		switch {
		case h.err:
			return FillUpstreamError
		case h.refused:
			return FillRefused
		case !h.done || len(h.finish) == 0 || dropped:
			return FillIncomplete
		}
		for _, f := range h.finish {
			if r := openaiFinish(f); r != "" {
				return r
			}
		}
		return ""
	case dialectName == "openai":
		var m struct {
			Choices []struct {
				FinishReason *string `json:"finish_reason"`
				Message      struct {
					Refusal *string `json:"refusal"`
				} `json:"message"`
			} `json:"choices"`
		}
		if json.Unmarshal(body, &m) != nil || len(m.Choices) == 0 {
			return FillIncomplete
		}
		for _, c := range m.Choices {
			if c.Message.Refusal != nil && *c.Message.Refusal != "" {
				return FillRefused
			}
			if c.FinishReason == nil {
				return FillIncomplete
			}
			if r := openaiFinish(*c.FinishReason); r != "" {
				return r
			}
		}
		return ""
	case dialectName == "openai_embeddings" && !stream:
		var m struct {
			Object string            `json:"object"`
			Data   []json.RawMessage `json:"data"`
		}
		if json.Unmarshal(body, &m) != nil || m.Object != "list" || len(m.Data) == 0 {
			return FillIncomplete
		}
		return ""
	}
	return FillIncomplete
}

// decodeSSE runs a whole stream through h, ending its last event even if
// the blank line after it is missing; dropped reports events lost to an
// over-long line (such a stream is not replayed).
func decodeSSE(body []byte, h wire.SSEHandler) (dropped bool) {
	var d wire.SSEDecoder
	d.Write(body, h)
	d.Write([]byte("\n\n"), h)
	return d.Dropped() > 0
}

// anthropicStop judges a Messages stop_reason
// (https://docs.anthropic.com/en/api/handling-stop-reasons).
func anthropicStop(reason string) string {
	switch reason {
	case "end_turn", "stop_sequence", "tool_use":
		return ""
	case "max_tokens", "model_context_window_exceeded":
		return FillTruncated
	case "refusal":
		return FillRefused
	}
	return FillIncomplete // pause_turn (a server tool's turn to come back to), unknown
}

// openaiFinish judges a Chat Completions finish_reason
// (https://platform.openai.com/docs/api-reference/chat/object).
func openaiFinish(reason string) string {
	switch reason {
	case "stop", "tool_calls", "function_call":
		return ""
	case "length":
		return FillTruncated
	case "content_filter":
		return FillRefused
	}
	return FillIncomplete
}

// anthropicEvents reads an Anthropic stream's stop: message_delta's
// stop_reason, message_stop, and error events
// (https://docs.anthropic.com/en/docs/build-with-claude/streaming).
type anthropicEvents struct {
	stop         string
	stopped, err bool
}

func (a *anthropicEvents) Event(name, data []byte) {
	switch string(name) {
	case "message_delta":
		var m struct {
			Delta struct {
				StopReason string `json:"stop_reason"`
			} `json:"delta"`
		}
		if json.Unmarshal(data, &m) == nil && m.Delta.StopReason != "" {
			a.stop = m.Delta.StopReason
		}
	case "message_stop":
		a.stopped = true
	case "error":
		a.err = true
	}
}

// openaiChunks reads a Chat Completions stream: each choice's last
// finish_reason, a refusal delta, an error chunk, and data: [DONE]
// (https://platform.openai.com/docs/api-reference/chat-streaming).
type openaiChunks struct {
	finish             map[int64]string
	done, err, refused bool
}

func (o *openaiChunks) Event(_, data []byte) {
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, []byte("[DONE]")) {
		o.done = true
		return
	}
	var m struct {
		Error   json.RawMessage `json:"error"`
		Choices []struct {
			Index        int64   `json:"index"`
			FinishReason *string `json:"finish_reason"`
			Delta        struct {
				Refusal *string `json:"refusal"`
			} `json:"delta"`
		} `json:"choices"`
	}
	if json.Unmarshal(data, &m) != nil {
		o.err = true
		return
	}
	if len(m.Error) > 0 && !bytes.Equal(m.Error, []byte("null")) {
		o.err = true
	}
	for _, c := range m.Choices {
		if c.FinishReason != nil {
			o.finish[c.Index] = *c.FinishReason
		}
		if c.Delta.Refusal != nil && *c.Delta.Refusal != "" {
			o.refused = true
		}
	}
}

// cacheEntry is one stored answer.
type cacheEntry struct {
	Status   int
	Headers  []Header
	Model    string // the model the provider said served it
	Stream   bool
	Usage    accounting.Usage // what it cost when it was made
	StoredAt time.Time
	Body     []byte
}

// entryVersion starts every encoded entry; an entry of another version is
// a miss (and is overwritten by the answer that follows).
const entryVersion = 1

// Bounds of a decoded entry: what is replayed must also be valid to send.
const (
	maxEntryHeaders     = 16
	maxEntryHeaderBytes = 8 << 10
	maxEntryMeta        = 64 << 10
)

type entryMeta struct {
	Status   int              `json:"s"`
	Headers  [][2]string      `json:"h,omitempty"`
	Model    string           `json:"m,omitempty"`
	Stream   bool             `json:"st,omitempty"`
	Usage    accounting.Usage `json:"u"`
	StoredAt int64            `json:"t"` // unix milliseconds
}

// encodeEntry lays an entry out as a version byte, the length of a small
// JSON header (status, headers, model, usage, time), the header, then the
// body as is.
func encodeEntry(e cacheEntry) []byte {
	m := entryMeta{Status: e.Status, Model: e.Model, Stream: e.Stream, Usage: e.Usage, StoredAt: e.StoredAt.UnixMilli()}
	for _, h := range e.Headers {
		m.Headers = append(m.Headers, [2]string{h.Name, h.Value})
	}
	meta, _ := json.Marshal(m) // plain values: cannot fail
	out := make([]byte, 0, 1+binary.MaxVarintLen32+len(meta)+len(e.Body))
	out = append(out, entryVersion)
	out = binary.AppendUvarint(out, uint64(len(meta)))
	out = append(out, meta...)
	return append(out, e.Body...)
}

var errEntry = errors.New("gate: malformed response cache entry")

// decodeEntry reverses encodeEntry. Whatever the store returns, it either
// fails or yields an entry that is safe to send: a 2xx status, header
// names and values Envoy accepts, plausible usage.
func decodeEntry(b []byte) (cacheEntry, error) {
	if len(b) < 2 || b[0] != entryVersion {
		return cacheEntry{}, errEntry
	}
	n, k := binary.Uvarint(b[1:])
	if k <= 0 || n > maxEntryMeta || n > uint64(len(b)-1-k) {
		return cacheEntry{}, errEntry
	}
	metaEnd := 1 + k + int(n)
	var m entryMeta
	if err := json.Unmarshal(b[1+k:metaEnd], &m); err != nil {
		return cacheEntry{}, fmt.Errorf("%w: %v", errEntry, err)
	}
	if m.Status < 200 || m.Status > 299 || len(m.Headers) > maxEntryHeaders || !m.Usage.Plausible() || m.StoredAt < 0 {
		return cacheEntry{}, errEntry
	}
	e := cacheEntry{Status: m.Status, Model: m.Model, Stream: m.Stream, Usage: m.Usage, StoredAt: time.UnixMilli(m.StoredAt), Body: b[metaEnd:]}
	for _, h := range m.Headers {
		if !validHeaderName(h[0]) || !validHeaderValue(h[1]) {
			return cacheEntry{}, errEntry
		}
		e.Headers = append(e.Headers, Header{h[0], h[1]})
	}
	return e, nil
}

// validHeaderName accepts a lower-case token (RFC 9110 §5.1), not a
// pseudo-header, not content-length (the gate sets it) and not one of
// tokenwarden's own.
func validHeaderName(s string) bool {
	if s == "" || len(s) > 128 || s == "content-length" || len(s) >= 14 && s[:14] == "x-tokenwarden-" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// validHeaderValue accepts visible ASCII, spaces and tabs (RFC 9110 §5.5),
// bounded.
func validHeaderValue(s string) bool {
	if len(s) > maxEntryHeaderBytes {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
