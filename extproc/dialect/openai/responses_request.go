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
// system and developer messages) and records where the model is, for Edit.
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
			req.Messages, err = estimateInput(&r, &c, &fp)
		case "instructions":
			err = estimateInstructions(&r, &c, &fp)
		case "tools":
			start := -1
			if r.Peek() == wire.KindArray {
				start = r.Pos()
			}
			var n int
			n, err = wire.EstimateTools(&r, &c)
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

// estimateInput consumes input: a string (one user message) or a list of
// input items, and returns how many there are.
func estimateInput(r *wire.Reader, c *wire.TokenCounter, fp *prefix) (int, error) {
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
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() != wire.KindObject {
			return n, wire.Invalid(fmt.Sprintf("input.%d: must be an object", n))
		}
		start := r.Pos()
		role, err := estimateItem(r, c)
		if err != nil {
			return n, wire.Within(fmt.Sprintf("input.%d", n), err)
		}
		fp.message(r.Slice(start, r.Pos()), role)
		n++
	}
	return n, nil
}

// estimateItem consumes one input item and returns its role, still escaped
// (nil for items that are not messages). Messages
// (https://platform.openai.com/docs/api-reference/responses/create#responses-create-input)
// cost their parts plus the per-message framing; function and tool calls and
// their outputs cost their text plus the per-call framing; reasoning items
// cost their summaries (their encrypted content is not text the model
// reads as such); an item_reference names an item the body does not hold.
// Any other item costs its JSON text.
func estimateItem(r *wire.Reader, c *wire.TokenCounter) ([]byte, error) {
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
			if err := estimateResponsesContent(r, c); err != nil {
				return nil, wire.Within("content", err)
			}
		case "output":
			// function_call_output: a string or a list of content parts.
			if r.Peek() == wire.KindArray {
				if err := estimateResponsesContent(r, c); err != nil {
					return nil, wire.Within("output", err)
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
	switch {
	case role != nil || string(typ) == "message":
		c.AddTokens(wire.MessageOverheadTokens)
	case string(typ) == "item_reference" || string(typ) == "reasoning":
	default: // function_call, function_call_output, custom_tool_call, *_call…
		c.AddTokens(wire.ToolCallOverheadTokens)
	}
	return role, nil
}

// estimateResponsesContent consumes message content: a string, null, or a
// list of content parts.
func estimateResponsesContent(r *wire.Reader, c *wire.TokenCounter) error {
	switch r.Peek() {
	case wire.KindString:
		r.EstimateString(c)
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
		estimateResponsesPart(r, c)
	}
	return nil
}

// estimateResponsesPart consumes one content part: input_text, output_text
// and refusal cost their text; input_image a fixed estimate whatever its
// encoding; input_file its base64 size when inline, else a fixed estimate;
// input_audio a fixed estimate. Ids, URLs, annotations and cache markers
// are not text the model reads.
func estimateResponsesPart(r *wire.Reader, c *wire.TokenCounter) {
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
		case "file_data":
			start, end := r.Skip()
			fileData = end - start
		case "image_url", "file_id", "file_url", "filename", "detail", "input_audio",
			"annotations", "logprobs", "prompt_cache_breakpoint":
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
}
