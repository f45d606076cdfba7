// Package anthropic is the Anthropic Messages API (/v1/messages) wire
// format: parse and estimate a request, rewrite its model byte-exactly,
// extract usage from a JSON response or an SSE stream, and build the API's
// error body. Pure: bytes in, values and bytes out.
package anthropic

import (
	"fmt"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// maxBlockDepth bounds recursion through nested content (tool_result and
// document content holding blocks); deeper content is estimated as raw JSON.
const maxBlockDepth = 3

// ParseRequest reads a Messages API request body in one pass: model
// (required string), max_tokens, stream, messages (required array), system
// (string or blocks) and tools, and estimates the input tokens. Malformed
// bodies yield an error matching wire.ErrInvalidRequest whose message is meant
// for the client's 400. Unknown fields are validated as JSON and otherwise
// ignored; they still count towards the estimate only where the model reads
// them (messages, system, tools).
func ParseRequest(body []byte) (wire.Request, error) {
	var (
		req  wire.Request
		r    wire.Reader
		c    wire.TokenCounter
		seen wire.KeySet
	)
	r.Reset(body)
	if err := wire.ExpectObject(&r); err != nil {
		return req, err
	}
	var haveModel, haveMessages bool
	var system, tools [2]int // spans of the stable prefix, for its fingerprint
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if err := seen.Add(key); err != nil {
			return req, wire.Fail(&r, err)
		}
		var err error
		switch string(key) {
		case "model":
			req.Model, _, err = wire.ReadModel(&r)
			haveModel = true
		case "max_tokens":
			req.MaxTokens, err = wire.ReadMaxTokens(&r, "max_tokens")
		case "stream":
			req.Stream, err = wire.ReadOptionalBool(&r, "stream")
		case "messages":
			haveMessages = true
			req.Messages, err = wire.EstimateMessages(&r, &c, messageMember)
		case "system":
			system[0] = r.Pos()
			err = estimateSystem(&r, &c)
			system[1] = r.Pos()
		case "tools":
			var n int
			tools[0] = r.Pos()
			n, err = wire.EstimateToolsFunc(&r, &c, estimateTool)
			tools[1] = r.Pos()
			req.HasTools = n > 0
		default:
			r.Skip()
		}
		if err != nil {
			return req, wire.Fail(&r, err)
		}
	}
	if err := wire.Finish(&r, haveModel, haveMessages); err != nil {
		return req, err
	}
	req.InputTokens = c.Tokens() + wire.RequestOverheadTokens
	if system[1] > system[0] || tools[1] > tools[0] {
		var h wire.Hash64
		h.Write(body[system[0]:system[1]])
		h.WriteByte(0)
		h.Write(body[tools[0]:tools[1]])
		req.PrefixFingerprint, req.HasPrefix = h.Sum64(), true
	}
	return req, nil
}

// messageMember estimates one member of a message: only content is read by
// the model (role is framing, counted in the per-message overhead).
func messageMember(r *wire.Reader, c *wire.TokenCounter, key []byte) error {
	if string(key) != "content" {
		r.Skip()
		return nil
	}
	switch r.Peek() {
	case wire.KindString:
		r.EstimateString(c)
	case wire.KindArray:
		if err := estimateBlocks(r, c, 0); err != nil {
			return wire.Within("content", err)
		}
	default:
		return wire.Invalid("content: must be a string or an array of content blocks")
	}
	return nil
}

func estimateSystem(r *wire.Reader, c *wire.TokenCounter) error {
	c.AddTokens(wire.MessageOverheadTokens)
	switch r.Peek() {
	case wire.KindString:
		r.EstimateString(c)
	case wire.KindArray:
		if err := estimateBlocks(r, c, 0); err != nil {
			return wire.Within("system", err)
		}
	case wire.KindNull:
		r.Skip()
	default:
		return wire.Invalid("system: must be a string or an array of text blocks")
	}
	return nil
}

// estimateBlocks consumes an array of content blocks.
func estimateBlocks(r *wire.Reader, c *wire.TokenCounter, depth int) error {
	it := r.Array()
	for i := 0; r.NextElem(&it); i++ {
		if r.Peek() != wire.KindObject {
			return wire.Invalid(fmt.Sprintf("%d: content block must be an object", i))
		}
		if err := estimateBlock(r, c, depth); err != nil {
			return err
		}
	}
	return nil
}

// estimateBlock consumes one content block. Text-bearing fields are counted
// as they stream past; the source is only located, because whether its data
// is text or an opaque base64 blob depends on fields that may come after it.
func estimateBlock(r *wire.Reader, c *wire.TokenCounter, depth int) error {
	var typ []byte
	src := [2]int{-1, -1}
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		switch string(key) {
		case "type":
			if r.Peek() != wire.KindString {
				return wire.Invalid("type: must be a string")
			}
			typ, _ = r.RawString()
		case "text", "thinking", "title", "context", "name":
			estimateText(r, c)
		case "content":
			if err := estimateContent(r, c, depth); err != nil {
				return err
			}
		case "source":
			src[0], src[1] = r.Skip()
		case "cache_control", "citations", "signature", "id", "tool_use_id", "is_error":
			r.Skip()
		default: // input (tool_use), data (redacted_thinking), unknown fields
			r.EstimateValue(c)
		}
	}
	if r.Err() != nil {
		return nil // reported by wire.Finish
	}
	switch string(typ) {
	case "image":
		c.AddTokens(wire.ImageTokens)
		return nil
	case "tool_use", "server_tool_use", "tool_result":
		c.AddTokens(wire.ToolCallOverheadTokens)
	}
	if src[0] >= 0 {
		return estimateSource(r.Slice(src[0], src[1]), c, depth)
	}
	return nil
}

// estimateContent consumes nested content: a string, or blocks.
func estimateContent(r *wire.Reader, c *wire.TokenCounter, depth int) error {
	switch {
	case r.Peek() == wire.KindString:
		r.EstimateString(c)
	case r.Peek() == wire.KindArray && depth < maxBlockDepth:
		return estimateBlocks(r, c, depth+1)
	default:
		r.EstimateValue(c)
	}
	return nil
}

func estimateText(r *wire.Reader, c *wire.TokenCounter) {
	if r.Peek() == wire.KindString {
		r.EstimateString(c)
		return
	}
	r.EstimateValue(c)
}

// estimateSource estimates a document (or other non-image) source:
// {"type":"base64"|"text"|"content"|"url"|"file", ...}. Its span was
// validated when it was skipped.
func estimateSource(src []byte, c *wire.TokenCounter, depth int) error {
	var r wire.Reader
	r.Reset(src)
	if r.Peek() != wire.KindObject {
		r.EstimateValue(c)
		return nil
	}
	var typ []byte
	data := [2]int{-1, -1}
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		switch string(key) {
		case "type":
			typ, _ = r.RawString()
		case "data":
			data[0], data[1] = r.Skip()
		case "content":
			if err := estimateContent(&r, c, depth); err != nil {
				return err
			}
		default:
			r.Skip()
		}
	}
	switch {
	case string(typ) == "content":
	case string(typ) == "text" && data[0] >= 0:
		var d wire.Reader
		d.Reset(src[data[0]:data[1]])
		estimateText(&d, c)
	case string(typ) == "base64" && data[0] >= 0:
		c.AddTokens(wire.Base64DocumentTokens(data[1] - data[0]))
	default:
		c.AddTokens(wire.DocumentTokens)
	}
	return nil
}

// estimateTool counts one tool definition: client tools by name,
// description and input schema; server tools (web search, code execution…)
// by their whole definition.
func estimateTool(r *wire.Reader, c *wire.TokenCounter) {
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		switch string(key) {
		case "cache_control", "defer_loading", "eager_input_streaming", "strict":
			r.Skip()
		case "name", "description":
			estimateText(r, c)
		default:
			r.EstimateValue(c)
		}
	}
}

// SetModel rewrites the top-level "model", preserving every other byte.
func SetModel(body []byte, model string) ([]byte, error) { return wire.SetModel(body, model) }
