// Package openai is the OpenAI Chat Completions (/v1/chat/completions) wire
// format, as spoken by OpenAI and OpenAI-compatible servers: parse and
// estimate a request, rewrite its model and force stream usage byte-exactly,
// extract usage from a JSON response or an SSE stream, and build the error
// body. Pure: bytes in, values and bytes out.
package openai

import (
	"fmt"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// ParseRequest reads a Chat Completions request body in one pass: model and
// messages (required), max_completion_tokens (else max_tokens), stream,
// stream_options.include_usage, tools and legacy functions, and estimates
// the input tokens. Malformed bodies yield an error matching
// wire.ErrInvalidRequest whose message is meant for the client's 400.
func ParseRequest(body []byte) (wire.Request, error) {
	var (
		req                 wire.Request
		r                   wire.Reader
		c                   wire.TokenCounter
		seen                wire.KeySet
		maxTokens, maxCompl int64
		haveCompl           bool
		haveModel, haveMsgs bool
	)
	r.Reset(body)
	if err := wire.ExpectObject(&r); err != nil {
		return req, err
	}
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if err := seen.Add(key); err != nil {
			return req, wire.Fail(&r, err)
		}
		var err error
		switch string(key) {
		case "model":
			req.Model, err = wire.ReadModel(&r)
			haveModel = true
		case "max_tokens":
			maxTokens, err = wire.ReadMaxTokens(&r, "max_tokens")
		case "max_completion_tokens":
			haveCompl = r.Peek() != wire.KindNull
			maxCompl, err = wire.ReadMaxTokens(&r, "max_completion_tokens")
		case "stream":
			req.Stream, err = wire.ReadOptionalBool(&r, "stream")
		case "stream_options":
			req.StreamUsageRequested, err = readStreamOptions(&r)
		case "messages":
			haveMsgs = true
			req.Messages, err = wire.EstimateMessages(&r, &c, messageMember)
		case "tools", "functions":
			var n int
			n, err = wire.EstimateTools(&r, &c, func(r *wire.Reader, c *wire.TokenCounter) { r.EstimateValue(c) })
			req.HasTools = req.HasTools || n > 0
		default:
			r.Skip()
		}
		if err != nil {
			return req, wire.Fail(&r, err)
		}
	}
	if err := wire.Finish(&r, haveModel, haveMsgs); err != nil {
		return req, err
	}
	req.MaxTokens = maxTokens
	if haveCompl {
		req.MaxTokens = maxCompl
	}
	req.InputTokens = c.Tokens() + wire.RequestOverheadTokens
	return req, nil
}

// readStreamOptions reads stream_options (object or null) and reports
// include_usage.
func readStreamOptions(r *wire.Reader) (bool, error) {
	if r.Null() {
		return false, nil
	}
	if r.Peek() != wire.KindObject {
		return false, wire.Invalid("stream_options: must be an object")
	}
	include := false
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if string(key) != "include_usage" {
			r.Skip()
			continue
		}
		v, err := wire.ReadOptionalBool(r, "stream_options.include_usage")
		if err != nil {
			return false, err
		}
		include = v
	}
	return include, nil
}

// messageMember estimates one member of a message.
func messageMember(r *wire.Reader, c *wire.TokenCounter, key []byte) error {
	switch string(key) {
	case "role":
		r.Skip()
	case "tool_call_id": // a tool result, framed like Anthropic's
		r.Skip()
		c.AddTokens(wire.ToolCallOverheadTokens)
	case "tool_calls":
		estimateToolCalls(r, c)
	case "content":
		if err := estimateContent(r, c); err != nil {
			return wire.Within("content", err)
		}
	default: // name, function_call, reasoning…
		r.EstimateValue(c)
	}
	return nil
}

// estimateToolCalls counts each call's JSON plus the per-call framing.
func estimateToolCalls(r *wire.Reader, c *wire.TokenCounter) {
	if r.Peek() != wire.KindArray {
		r.EstimateValue(c)
		return
	}
	it := r.Array()
	for r.NextElem(&it) {
		r.EstimateValue(c)
		c.AddTokens(wire.ToolCallOverheadTokens)
	}
}

// estimateContent consumes message content: a string, null (assistant
// turns with tool calls), or an array of parts.
func estimateContent(r *wire.Reader, c *wire.TokenCounter) error {
	switch r.Peek() {
	case wire.KindString:
		r.EstimateString(c)
		return nil
	case wire.KindNull:
		r.Skip()
		return nil
	case wire.KindArray:
	default:
		return wire.Invalid("must be a string, null or an array of content parts")
	}
	it := r.Array()
	for i := 0; r.NextElem(&it); i++ {
		if r.Peek() != wire.KindObject {
			return wire.Invalid(fmt.Sprintf("%d: content part must be an object", i))
		}
		estimatePart(r, c)
	}
	return nil
}

// estimatePart consumes one content part. Media parts cost a fixed estimate
// whatever their encoded size; a file part is estimated from its base64 size.
func estimatePart(r *wire.Reader, c *wire.TokenCounter) {
	var typ []byte
	fileData := -1
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		switch string(key) {
		case "type":
			if r.Peek() == wire.KindString {
				typ, _ = r.RawString()
			} else {
				r.Skip()
			}
		case "text", "refusal":
			if r.Peek() == wire.KindString {
				r.EstimateString(c)
			} else {
				r.EstimateValue(c)
			}
		case "image_url", "input_audio":
			r.Skip()
		case "file":
			fileData = fileDataLen(r)
		default:
			r.EstimateValue(c)
		}
	}
	switch string(typ) {
	case "image_url":
		c.AddTokens(wire.ImageTokens)
	case "input_audio":
		c.AddTokens(wire.MediaTokens)
	case "file":
		if fileData >= 0 {
			c.AddTokens(wire.Base64DocumentTokens(fileData))
		} else {
			c.AddTokens(wire.DocumentTokens)
		}
	}
}

// fileDataLen consumes a file object and returns the length of its
// file_data (a base64 data URL), or -1 when it names a file by id.
func fileDataLen(r *wire.Reader) int {
	if r.Peek() != wire.KindObject {
		r.Skip()
		return -1
	}
	n := -1
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		start, end := r.Skip()
		if string(key) == "file_data" {
			n = end - start
		}
	}
	return n
}

// SetModel rewrites the top-level "model", preserving every other byte.
func SetModel(body []byte, model string) ([]byte, error) { return wire.SetModel(body, model) }

// ForceStreamUsage sets stream_options.include_usage to true so the stream
// ends with a usage chunk, creating stream_options when absent or null and
// keeping its other fields; every other byte is preserved. changed is false
// when include_usage was already true (the body is returned as is).
func ForceStreamUsage(body []byte) (out []byte, changed bool, err error) {
	m, err := wire.FindMember(body, "stream_options")
	if err != nil {
		return nil, false, err
	}
	if !m.Found {
		sep := ","
		if m.Members == 0 {
			sep = ""
		}
		return wire.Splice(body, m.InsertAt, m.InsertAt, sep, `"stream_options":{"include_usage":true}`), true, nil
	}
	opts := body[m.Start:m.End]
	if string(opts) == "null" {
		return wire.Splice(body, m.Start, m.End, `{"include_usage":true}`), true, nil
	}
	if opts[0] != '{' {
		return nil, false, wire.Invalid("stream_options: must be an object")
	}
	inc, err := wire.FindMember(opts, "include_usage")
	if err != nil {
		return nil, false, wire.Within("stream_options", err)
	}
	if !inc.Found {
		sep := ","
		if inc.Members == 0 {
			sep = ""
		}
		at := m.Start + inc.InsertAt
		return wire.Splice(body, at, at, sep, `"include_usage":true`), true, nil
	}
	if string(opts[inc.Start:inc.End]) == "true" {
		return body, false, nil
	}
	return wire.Splice(body, m.Start+inc.Start, m.Start+inc.End, "true"), true, nil
}
