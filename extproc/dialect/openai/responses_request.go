package openai

import (
	"fmt"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// The Responses API (https://platform.openai.com/docs/api-reference/responses):
// POST /v1/responses creates a response, POST /v1/responses/compact compacts
// a conversation (https://platform.openai.com/docs/api-reference/responses/compact)
// and is billed the same way, so one parser reads both bodies.

// ParseResponsesRequest reads a Responses API request body in one pass:
// model (required), input (a string or a list of items), instructions,
// tools, max_output_tokens (the output bound, reasoning included), stream
// and background, and estimates the input tokens. The same pass
// fingerprints the stable prefix (tools, instructions and the leading
// system and developer messages) and records where the model is, and the
// prompt-cache breakpoints and candidates (cache.go), for Edit.
// Input the body only names (previous_response_id, conversation, prompt
// templates, item_reference, files by id) cannot be seen here and is left
// to settlement. Malformed bodies yield an error matching
// wire.ErrInvalidRequest whose message is meant for the client's 400.
func ParseResponsesRequest(body []byte) (wire.Request, error) {
	var (
		req       wire.Request
		r         wire.Reader
		c         wire.TokenCounter
		seen      wire.KeySet
		fp        prefix
		cw        cacheWalk
		haveModel bool
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
			req.Model, req.Index.Model, err = wire.ReadModel(&r)
		case "max_output_tokens":
			req.MaxTokens, err = wire.ReadOutputLimit(&r, "max_output_tokens", &req.Index.OutputLimit)
		case "stream":
			req.Stream, err = wire.ReadOptionalBool(&r, "stream")
		case "background":
			req.Background, err = wire.ReadOptionalBool(&r, "background")
		case "input":
			req.Messages, err = estimateInput(&r, &c, &fp, &cw)
		case "instructions":
			before := c
			err = estimateInstructions(&r, &c, &fp)
			cw.ci.SystemTokens = c.Since(before)
		case "prompt_cache_options":
			cw.options(&r)
		case "tools":
			start := -1
			if r.Peek() == wire.KindArray {
				start = r.Pos()
			}
			var n int
			before := c
			n, err = wire.EstimateTools(&r, &c)
			cw.ci.ToolsTokens = c.Since(before)
			req.HasTools = n > 0
			if start >= 0 && err == nil {
				fp.definitions(true, r.Slice(start, r.Pos()), n)
			}
		default:
			r.Skip()
		}
		if err != nil {
			return req, wire.Fail(&r, err)
		}
		req.Index.Append = wire.Insertion{At: r.Pos(), Comma: true}
	}
	if err := wire.End(&r); err != nil {
		return req, err
	}
	if !haveModel {
		return req, wire.Invalid("model: field required")
	}
	req.InputTokens = c.Tokens() + wire.RequestOverheadTokens
	req.PrefixFingerprint, req.HasPrefix = fp.sum()
	req.Index.Cache = cw.ci
	return req, nil
}

// estimateInstructions consumes instructions: a string (the system
// message the API inserts first) or null.
func estimateInstructions(r *wire.Reader, c *wire.TokenCounter, fp *prefix) error {
	switch r.Peek() {
	case wire.KindNull:
		r.Skip()
		return nil
	case wire.KindString:
	default:
		return wire.Invalid("instructions: must be a string")
	}
	start := r.Pos()
	c.AddTokens(wire.MessageOverheadTokens)
	r.EstimateString(c)
	fp.instructionsText(r.Slice(start, r.Pos()))
	return nil
}

// estimateInput consumes input: a string (one user message, the final one:
// no breakpoint candidate) or a list of input items, and returns how many
// there are.
func estimateInput(r *wire.Reader, c *wire.TokenCounter, fp *prefix, cw *cacheWalk) (int, error) {
	switch r.Peek() {
	case wire.KindString:
		c.AddTokens(wire.MessageOverheadTokens)
		r.EstimateString(c)
		fp.message(nil, nil)
		return 1, nil
	case wire.KindNull:
		r.Skip()
		return 0, nil
	case wire.KindArray:
	default:
		return 0, wire.Invalid("input: must be a string or an array of input items")
	}
	cw.beginMessages(c)
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() != wire.KindObject {
			return n, wire.Invalid(fmt.Sprintf("input.%d: must be an object", n))
		}
		start := r.Pos()
		cw.beginMessage(n)
		role, message, err := estimateItem(r, c, cw)
		if err != nil {
			return n, wire.Within(fmt.Sprintf("input.%d", n), err)
		}
		if message {
			cw.endMessage(role)
		} else {
			cw.endItem()
		}
		fp.message(r.Slice(start, r.Pos()), role)
		n++
	}
	cw.endMessages(n)
	return n, nil
}

// estimateItem consumes one input item and returns its role, still escaped
// (nil for items that are not messages), and whether it is a message. Messages
// (https://platform.openai.com/docs/api-reference/responses/create#responses-create-input)
// cost their parts plus the per-message framing; function and tool calls and
// their outputs cost their text plus the per-call framing; reasoning items
// cost their summaries (their encrypted content is not text the model
// reads as such); an item_reference names an item the body does not hold.
// Any other item costs its JSON text.
func estimateItem(r *wire.Reader, c *wire.TokenCounter, cw *cacheWalk) ([]byte, bool, error) {
	var typ, role []byte
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		switch string(key) {
		case "type":
			if r.Peek() == wire.KindString {
				typ, _ = r.RawString()
			} else {
				r.Skip()
			}
		case "role":
			if r.Peek() == wire.KindString {
				role, _ = r.RawString()
			} else {
				r.Skip()
			}
		case "content":
			cw.beginContent()
			if err := estimateResponsesContent(r, c, cw, true); err != nil {
				return nil, false, wire.Within("content", err)
			}
		case "output":
			// function_call_output: a string or a list of content parts.
			if r.Peek() == wire.KindArray {
				if err := estimateResponsesContent(r, c, cw, false); err != nil {
					return nil, false, wire.Within("output", err)
				}
			} else if r.Peek() == wire.KindString {
				r.EstimateString(c)
			} else {
				r.EstimateValue(c)
			}
		case "id", "call_id", "status", "encrypted_content":
			r.Skip()
		default: // name, arguments, input, summary, action, …
			if r.Peek() == wire.KindString {
				r.EstimateString(c)
			} else {
				r.EstimateValue(c)
			}
		}
	}
	message := role != nil || string(typ) == "message"
	switch {
	case message:
		c.AddTokens(wire.MessageOverheadTokens)
	case string(typ) == "item_reference" || string(typ) == "reasoning":
	default: // function_call, function_call_output, custom_tool_call, *_call…
		c.AddTokens(wire.ToolCallOverheadTokens)
	}
	return role, message, nil
}

// estimateResponsesContent consumes message content: a string, null, or a
// list of content parts, handing them to the prompt-cache walk (inMessage:
// a message's content, whose parts are candidates; else a call's output,
// whose markers only count).
func estimateResponsesContent(r *wire.Reader, c *wire.TokenCounter, cw *cacheWalk, inMessage bool) error {
	switch r.Peek() {
	case wire.KindString:
		start := r.Pos()
		r.EstimateString(c)
		if inMessage {
			cw.str(start, r.Pos(), c)
		}
		return nil
	case wire.KindNull:
		r.Skip()
		return nil
	case wire.KindArray:
	default:
		return wire.Invalid("must be a string or an array of content parts")
	}
	it := r.Array()
	for i := 0; r.NextElem(&it); i++ {
		if r.Peek() != wire.KindObject {
			return wire.Invalid(fmt.Sprintf("%d: content part must be an object", i))
		}
		estimateResponsesPart(r, c, cw, i, inMessage)
	}
	return nil
}

// estimateResponsesPart consumes one content part: input_text, output_text
// and refusal cost their text; input_image a fixed estimate whatever its
// encoding; input_file its base64 size when inline, else a fixed estimate;
// input_audio a fixed estimate. Ids, URLs, annotations and cache markers
// are not text the model reads. The part is handed to the prompt-cache
// walk: input_text (not empty), input_image and input_file parts can carry
// a breakpoint.
func estimateResponsesPart(r *wire.Reader, c *wire.TokenCounter, cw *cacheWalk, i int, inMessage bool) {
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
			if m := peekMarker(r); marker != wire.MarkerSet {
				marker = m
			}
			r.Skip()
		case "file_data":
			start, end := r.Skip()
			fileData = end - start
		case "image_url", "file_id", "file_url", "filename", "detail", "input_audio",
			"annotations", "logprobs":
			r.Skip()
		default:
			r.EstimateValue(c)
		}
	}
	switch string(typ) {
	case "input_image":
		c.AddTokens(wire.ImageTokens)
	case "input_audio":
		c.AddTokens(wire.MediaTokens)
	case "input_file":
		if fileData >= 0 {
			c.AddTokens(wire.Base64DocumentTokens(fileData))
		} else {
			c.AddTokens(wire.DocumentTokens)
		}
	}
	carrier := wire.RawEqual(typ, "input_text") && text || wire.RawEqual(typ, "input_image") || wire.RawEqual(typ, "input_file")
	cw.part(i, start, r.Pos(), carrier, marker, inMessage, c)
}
