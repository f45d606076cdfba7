// Package openai is the OpenAI Chat Completions (/v1/chat/completions) wire
// format, as spoken by OpenAI and OpenAI-compatible servers: parse and
// estimate a request, rewrite its model and force stream usage byte-exactly,
// extract usage from a JSON response or an SSE stream, and build the error
// body. Pure: bytes in, values and bytes out.
package openai

import (
	"bytes"
	"fmt"
	"strconv"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// ParseRequest reads a Chat Completions request body in one pass: model and
// messages (required), max_completion_tokens (else max_tokens), stream,
// stream_options.include_usage, tools and legacy functions, and estimates
// the input tokens. The same pass fingerprints the stable prefix (see
// prefix) and records in the Index where the model and stream_options are,
// and the prompt-cache breakpoints and candidates (cache.go), for Edit. Malformed bodies yield an error matching wire.ErrInvalidRequest
// whose message is meant for the client's 400.
func ParseRequest(body []byte) (wire.Request, error) { return parseRequest(body, false) }

// parseRequest is ParseRequest; relaxed, as the convenience editors use it,
// it neither requires model and messages nor checks the scalars the edits do
// not read (the model's type, max_tokens, max_completion_tokens, stream).
func parseRequest(body []byte, relaxed bool) (wire.Request, error) {
	var (
		req                 wire.Request
		r                   wire.Reader
		c                   wire.TokenCounter
		seen                wire.KeySet
		fp                  prefix
		cw                  cacheWalk
		maxTokens, maxCompl int64
		haveCompl           bool
		haveModel, haveMsgs bool
	)
	r.Reset(body)
	if err := wire.ExpectObject(&r); err != nil {
		return req, err
	}
	it := r.Object()
	req.Index.Append = wire.Insertion{At: r.Pos()}
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if err := seen.Add(key); err != nil {
			return req, wire.Fail(&r, err)
		}
		var err error
		switch string(key) {
		case "model":
			haveModel = true
			if relaxed {
				req.Model, req.Index.Model = wire.SkipModel(&r)
			} else {
				req.Model, req.Index.Model, err = wire.ReadModel(&r)
			}
		case "max_tokens":
			if relaxed {
				r.Skip()
			} else {
				maxTokens, err = wire.ReadOutputLimit(&r, "max_tokens", &req.Index.OutputLimit)
			}
		case "max_completion_tokens":
			if relaxed {
				r.Skip()
			} else {
				haveCompl = r.Peek() != wire.KindNull
				maxCompl, err = wire.ReadOutputLimit(&r, "max_completion_tokens", &req.Index.OutputLimit)
			}
		case "stream":
			if relaxed {
				r.Skip()
			} else {
				req.Stream, err = wire.ReadOptionalBool(&r, "stream")
			}
		case "stream_options":
			req.StreamUsageRequested, err = readStreamOptions(&r, &req.Index.StreamOptions)
		case "messages":
			haveMsgs = true
			req.Messages, err = estimateMessages(&r, &c, &fp, &cw)
		case "prompt_cache_options":
			cw.options(&r)
		case "tools", "functions":
			isTools := key[0] == 't'
			start := -1
			if r.Peek() == wire.KindArray {
				start = r.Pos()
			}
			var n int
			before := c
			n, err = wire.EstimateTools(&r, &c)
			cw.ci.ToolsTokens += c.Since(before)
			req.HasTools = req.HasTools || n > 0
			if start >= 0 && err == nil {
				fp.definitions(isTools, r.Slice(start, r.Pos()), n)
			}
		default:
			r.Skip()
		}
		if err != nil {
			return req, wire.Fail(&r, err)
		}
		req.Index.Append = wire.Insertion{At: r.Pos(), Comma: true}
	}
	if relaxed {
		if err := wire.End(&r); err != nil {
			return req, err
		}
	} else if err := wire.Finish(&r, haveModel, haveMsgs); err != nil {
		return req, err
	}
	req.MaxTokens = maxTokens
	if haveCompl {
		req.MaxTokens = maxCompl
	}
	req.InputTokens = c.Tokens() + wire.RequestOverheadTokens
	req.PrefixFingerprint, req.HasPrefix = fp.sum()
	req.Index.Cache = cw.ci
	return req, nil
}

var includeUsage = []byte("include_usage")

// readStreamOptions reads stream_options (object or null), reports
// include_usage, and records both in so.
func readStreamOptions(r *wire.Reader, so *wire.StreamOptionsIndex) (bool, error) {
	if r.Peek() == wire.KindNull {
		start := r.Pos()
		r.Null()
		so.Value, so.Null = wire.Span{Start: start, End: r.Pos()}, true
		return false, nil
	}
	if r.Peek() != wire.KindObject {
		return false, wire.Invalid("stream_options: must be an object")
	}
	so.Value.Start = r.Pos()
	include := false
	it := r.Object()
	so.Append = wire.Insertion{At: r.Pos()}
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if string(key) != "include_usage" {
			if bytes.EqualFold(key, includeUsage) {
				// A case-insensitive decoder upstream would read it as include_usage.
				return false, wire.Invalid("stream_options: the key " + strconv.Quote(string(key)) + " differs from include_usage only in case")
			}
			r.Skip()
		} else {
			if so.IncludeUsage.Found() {
				// The provider would read one of them, tokenwarden another.
				return false, wire.Invalid("stream_options.include_usage: duplicate key")
			}
			if r.Peek() != wire.KindInvalid {
				so.IncludeUsage.Start = r.Pos()
			}
			v, err := wire.ReadOptionalBool(r, "stream_options.include_usage")
			if err != nil {
				return false, err
			}
			so.IncludeUsage.End = r.Pos()
			include = v
		}
		so.Append = wire.Insertion{At: r.Pos(), Comma: true}
	}
	so.Value.End = r.Pos()
	return include, nil
}

// estimateMessages consumes the messages array, adding the per-message
// overhead and estimating each member with messageMember, and hands each
// message to the prefix fingerprint and the prompt-cache walk. It returns
// the number of messages; member errors are prefixed with "messages.N".
func estimateMessages(r *wire.Reader, c *wire.TokenCounter, fp *prefix, cw *cacheWalk) (int, error) {
	if r.Peek() != wire.KindArray {
		return 0, wire.Invalid("messages: must be an array")
	}
	cw.beginMessages(c)
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() != wire.KindObject {
			return n, wire.Invalid(fmt.Sprintf("messages.%d: must be an object", n))
		}
		start := r.Pos()
		c.AddTokens(wire.MessageOverheadTokens)
		cw.beginMessage(n)
		var role []byte
		mit := r.Object()
		for key, ok := r.NextKey(&mit); ok; key, ok = r.NextKey(&mit) {
			if string(key) == "role" && r.Peek() == wire.KindString {
				role, _ = r.RawString()
				continue
			}
			if err := member(r, c, key, cw); err != nil {
				return n, wire.Within(fmt.Sprintf("messages.%d", n), err)
			}
		}
		cw.endMessage(role)
		fp.message(r.Slice(start, r.Pos()), role)
		n++
	}
	cw.endMessages(n)
	return n, nil
}

// messageMember estimates one member of a message.
func messageMember(r *wire.Reader, c *wire.TokenCounter, key []byte) error {
	return member(r, c, key, nil)
}

// member is messageMember, recording content for the prompt-cache walk cw
// (nil: none).
func member(r *wire.Reader, c *wire.TokenCounter, key []byte, cw *cacheWalk) error {
	switch string(key) {
	case "role":
		r.Skip()
	case "tool_call_id": // a tool result, framed like Anthropic's
		r.Skip()
		c.AddTokens(wire.ToolCallOverheadTokens)
	case "tool_calls":
		estimateToolCalls(r, c)
	case "content":
		cw.beginContent()
		if err := estimateContent(r, c, cw); err != nil {
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
func estimateContent(r *wire.Reader, c *wire.TokenCounter, cw *cacheWalk) error {
	switch r.Peek() {
	case wire.KindString:
		start := r.Pos()
		r.EstimateString(c)
		cw.str(start, r.Pos(), c)
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
		estimatePart(r, c, cw, i)
	}
	return nil
}

// estimatePart consumes content part i. Media parts cost a fixed estimate
// whatever their encoded size; a file part is estimated from its base64
// size. The part is handed to the prompt-cache walk: text (not empty),
// image_url and input_audio parts can carry a breakpoint.
func estimatePart(r *wire.Reader, c *wire.TokenCounter, cw *cacheWalk, i int) {
	var typ []byte
	fileData := -1
	start := r.Pos()
	text, marker := false, wire.MarkerNone
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
				from := r.Pos()
				r.EstimateString(c)
				text = text || key[0] == 't' && r.Pos()-from > 2
			} else {
				r.EstimateValue(c)
			}
		case "prompt_cache_breakpoint":
			// Counted as it always was: the estimate errs high.
			if m := peekMarker(r); marker != wire.MarkerSet {
				marker = m
			}
			r.EstimateValue(c)
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
	carrier := wire.RawEqual(typ, "text") && text || wire.RawEqual(typ, "image_url") || wire.RawEqual(typ, "input_audio")
	cw.part(i, start, r.Pos(), carrier, marker, true, c)
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
