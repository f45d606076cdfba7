// Package anthropic is the Anthropic Messages API (/v1/messages) wire
// format: parse and estimate a request, rewrite its model and place
// prompt-cache breakpoints byte-exactly, extract usage from a JSON response
// or an SSE stream, and build the API's error body. Pure: bytes in, values
// and bytes out.
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
// (string or blocks) and tools, and estimates the input tokens. The same pass
// fingerprints the stable prefix (system and tools) and records in the Index
// where the model is and what prompt-cache planning needs (wire.CacheIndex), so
// Edit never reads the body again. Malformed bodies yield an error matching
// wire.ErrInvalidRequest whose message is meant for the client's 400. Unknown
// fields are validated as JSON and otherwise ignored; they still count
// towards the estimate only where the model reads them (messages, system,
// tools).
func ParseRequest(body []byte) (wire.Request, error) { return parseRequest(body, false) }

// parseRequest is ParseRequest; relaxed, as the convenience editors use it,
// it neither requires model and messages nor checks the scalars the edits do
// not read (the model's type, max_tokens, stream).
func parseRequest(body []byte, relaxed bool) (wire.Request, error) {
	var (
		req  wire.Request
		w    walk
		seen wire.KeySet
	)
	w.r.Reset(body)
	r := &w.r
	if err := wire.ExpectObject(r); err != nil {
		return req, err
	}
	var haveModel, haveMessages bool
	var system, tools [2]int // spans of the stable prefix, for its fingerprint
	it := r.Object()
	req.Index.Append = wire.Insertion{At: r.Pos()}
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if err := seen.Add(key); err != nil {
			return req, wire.Fail(r, err)
		}
		var err error
		switch string(key) {
		case "model":
			haveModel = true
			if relaxed {
				req.Model, req.Index.Model = wire.SkipModel(r)
			} else {
				req.Model, req.Index.Model, err = wire.ReadModel(r)
			}
		case "max_tokens":
			if relaxed {
				r.Skip()
			} else {
				req.MaxTokens, err = wire.ReadOutputLimit(r, "max_tokens", &req.Index.OutputLimit)
			}
		case "stream":
			if relaxed {
				r.Skip()
			} else {
				req.Stream, err = wire.ReadOptionalBool(r, "stream")
			}
		case "messages":
			haveMessages = true
			req.Messages, err = w.messages()
		case "system":
			system[0] = r.Pos()
			err = w.system()
			system[1] = r.Pos()
		case "tools":
			var n int
			tools[0] = r.Pos()
			n, err = w.tools()
			tools[1] = r.Pos()
			req.HasTools = n > 0
		case "cache_control":
			w.automatic()
		default:
			r.Skip()
		}
		if err != nil {
			return req, wire.Fail(r, err)
		}
		req.Index.Append = wire.Insertion{At: r.Pos(), Comma: true}
	}
	if relaxed {
		if err := wire.End(r); err != nil {
			return req, err
		}
	} else if err := wire.Finish(r, haveModel, haveMessages); err != nil {
		return req, err
	}
	req.InputTokens = w.c.Tokens() + wire.RequestOverheadTokens
	req.Index.Cache = w.ci
	if system[1] > system[0] || tools[1] > tools[0] {
		var h wire.Hash64
		h.Write(body[system[0]:system[1]])
		h.WriteByte(0)
		h.Write(body[tools[0]:tools[1]])
		req.PrefixFingerprint, req.HasPrefix = h.Sum64(), true
	}
	return req, nil
}

// walk is one pass over a request body: the reader, the one token counter
// of the whole request (sections are estimated apart with Since), and the
// prompt-cache index the pass fills in.
//
// The index is a value here, copied into the Request at the end, rather
// than a pointer into the Request: the Reader's errors escape, and with them,
// to escape analysis, everything the walk points to.
type walk struct {
	r  wire.Reader
	c  wire.TokenCounter
	ci wire.CacheIndex // markers and candidates
	// estimating reports a span walked again only to be estimated (a
	// document source, see estimateSource): it records nothing.
	estimating bool
	seq        uint64 // ordinals handed out, see next
}

// tools consumes the tool list (null reads as empty): each definition is
// estimated by its name, description and schema (server tools, web search or
// code execution, by their whole definition), plus the per-tool and
// tool-prompt overheads; the last one that can carry a marker is the tools
// candidate. It returns the number of tools.
func (w *walk) tools() (int, error) {
	r := &w.r
	if r.Null() {
		return 0, nil
	}
	if r.Peek() != wire.KindArray {
		return 0, wire.Invalid("tools: must be an array")
	}
	cand := &w.ci.Tools
	*cand = wire.CacheCandidate{Msg: -1, Block: -1}
	start := w.c
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() != wire.KindObject {
			return n, wire.Invalid(fmt.Sprintf("tools.%d: must be an object", n))
		}
		var b block
		w.tool(&b)
		w.c.AddTokens(wire.ToolOverheadTokens)
		if b.canCarry(true) {
			b.candidate(cand, n, -1, w.c.Since(start)+wire.ToolPromptTokens)
		}
		n++
	}
	if n > 0 {
		w.c.AddTokens(wire.ToolPromptTokens)
		cand.Present = true
		w.ci.ToolsTokens = w.c.Since(start)
	}
	return n, nil
}

// tool consumes one tool definition.
func (w *walk) tool(b *block) {
	r := &w.r
	b.start = r.Pos()
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		b.members++
		switch string(key) {
		case "cache_control":
			w.marker(b)
		case "defer_loading":
			if r.Peek() == wire.KindBool {
				b.deferred, _ = r.Bool()
			} else {
				r.Skip()
			}
		case "eager_input_streaming", "strict":
			r.Skip()
		case "name", "description":
			estimateText(r, &w.c)
		default:
			r.EstimateValue(&w.c)
		}
	}
	w.closeBlock(b, secTools)
}

// system consumes the system prompt: a string or text blocks, framed like a
// message.
func (w *walk) system() error {
	r := &w.r
	start := w.c
	w.c.AddTokens(wire.MessageOverheadTokens)
	cand := &w.ci.System
	*cand = wire.CacheCandidate{Msg: -1, Block: -1}
	switch r.Peek() {
	case wire.KindString:
		cand.Present = true
		w.text(cand, start, secSystem)
	case wire.KindArray:
		cand.Present = true
		if _, err := w.blocks(cand, -1, start, 0, secSystem); err != nil {
			return wire.Within("system", err)
		}
	case wire.KindNull:
		r.Skip()
	default:
		return wire.Invalid("system: must be a string or an array of text blocks")
	}
	w.ci.SystemTokens = w.c.Since(start)
	return nil
}

// messages consumes the messages array, adding the per-message overhead;
// only content is read by the model (role is framing, counted in the
// overhead). The previous user turn, the last user message before the final
// message, is the third candidate. It returns the number of messages;
// content errors are prefixed with "messages.N".
func (w *walk) messages() (int, error) {
	r := &w.r
	if r.Peek() != wire.KindArray {
		return 0, wire.Invalid("messages: must be an array")
	}
	var last, prev turn // user turns
	start := w.c
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() != wire.KindObject {
			return n, wire.Invalid(fmt.Sprintf("messages.%d: must be an object", n))
		}
		w.c.AddTokens(wire.MessageOverheadTokens)
		t := turn{index: n, cand: wire.CacheCandidate{Msg: n, Block: -1}}
		var role []byte
		canCarry := false
		mit := r.Object()
		for key, ok := r.NextKey(&mit); ok; key, ok = r.NextKey(&mit) {
			switch string(key) {
			case "role":
				if r.Peek() == wire.KindString {
					role, _ = r.RawString()
				} else {
					r.Skip()
				}
			case "content":
				var err error
				if canCarry, err = w.content(&t.cand, n, start); err != nil {
					return n, wire.Within(fmt.Sprintf("messages.%d", n), err)
				}
			default:
				r.Skip()
			}
		}
		w.ci.FinalCanCarry = canCarry
		if wire.RawEqual(role, "user") {
			prev, last = last, t
			last.user = true
		}
		n++
	}
	switch {
	case last.user && last.index < n-1:
		w.ci.Turn = last.cand
	case prev.user:
		w.ci.Turn = prev.cand
	default:
		return n, nil
	}
	w.ci.Turn.Present = true
	return n, nil
}

// content consumes a message's content, a string or blocks, and reports
// whether it has a block that can carry a marker, leaving the last one in
// cand.
func (w *walk) content(cand *wire.CacheCandidate, msg int, start wire.TokenCounter) (bool, error) {
	r := &w.r
	switch r.Peek() {
	case wire.KindString:
		return w.text(cand, start, secMessages), nil
	case wire.KindArray:
		found, err := w.blocks(cand, msg, start, 0, secMessages)
		if err != nil {
			return false, wire.Within("content", err)
		}
		return found, nil
	}
	return false, wire.Invalid("content: must be a string or an array of content blocks")
}

// text consumes a string system prompt or content, which would become one
// text block, and makes it the candidate unless it is blank.
func (w *walk) text(cand *wire.CacheCandidate, start wire.TokenCounter, sec uint64) bool {
	r := &w.r
	from := r.Pos()
	if !r.EstimateString(&w.c) {
		return false
	}
	ord := w.next(sec)
	if blank(r.Slice(from+1, r.Pos()-1)) {
		return false
	}
	cand.Found, cand.Str, cand.Block = true, true, -1
	cand.Ord, cand.Marker = ord, wire.MarkerNone
	cand.Span = wire.Span{Start: from, End: r.Pos()}
	cand.Tokens = w.c.Since(start)
	return true
}

// blocks consumes an array of content blocks at depth. With a candidate
// (system and message content) it leaves there the last block that can carry
// a marker, with its estimate since start, and reports whether there was
// one; nested content passes nil.
func (w *walk) blocks(cand *wire.CacheCandidate, msg int, start wire.TokenCounter, depth int, sec uint64) (bool, error) {
	r := &w.r
	found := false
	it := r.Array()
	for i := 0; r.NextElem(&it); i++ {
		if r.Peek() != wire.KindObject {
			return found, wire.Invalid(fmt.Sprintf("%d: content block must be an object", i))
		}
		var b block
		if err := w.block(&b, depth, sec); err != nil {
			return found, err
		}
		if cand != nil && b.canCarry(false) {
			b.candidate(cand, i, msg, w.c.Since(start))
			found = true
		}
	}
	return found, nil
}

// block consumes one content block. Text-bearing fields are counted as they
// stream past; the source is only walked for the markers nested in it,
// because whether its data is text or an opaque base64 blob depends on fields
// that may come after it. The block's own marker, and those of the blocks
// nested in its content (tool_result, search results) or source (documents),
// are recorded as they close.
func (w *walk) block(b *block, depth int, sec uint64) error {
	r := &w.r
	b.start = r.Pos()
	src := [2]int{-1, -1}
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		b.members++
		switch string(key) {
		case "type":
			if r.Peek() != wire.KindString {
				return wire.Invalid("type: must be a string")
			}
			b.typ, _ = r.RawString()
		case "text":
			if r.Peek() != wire.KindString {
				r.EstimateValue(&w.c)
				continue
			}
			from := r.Pos()
			if r.EstimateString(&w.c) {
				b.hasText, b.blankText = true, blank(r.Slice(from+1, r.Pos()-1))
			}
		case "thinking", "title", "context", "name":
			estimateText(r, &w.c)
		case "content":
			if err := w.nested(depth, sec); err != nil {
				return err
			}
		case "source":
			src[0], src[1] = w.source(sec)
		case "cache_control":
			w.marker(b)
		case "citations", "signature", "id", "tool_use_id", "is_error":
			r.Skip()
		default: // input (tool_use), data (redacted_thinking), unknown fields
			r.EstimateValue(&w.c)
		}
	}
	w.closeBlock(b, sec)
	if r.Err() != nil {
		return nil // reported by wire.Finish
	}
	switch string(b.typ) {
	case "image":
		w.c.AddTokens(wire.ImageTokens)
		return nil
	case "tool_use", "server_tool_use", "tool_result":
		w.c.AddTokens(wire.ToolCallOverheadTokens)
	}
	if src[0] >= 0 {
		return w.estimateSource(r.Slice(src[0], src[1]), depth)
	}
	return nil
}

// nested consumes the content of a block: a string, or blocks one level
// deeper. Below maxBlockDepth content is estimated as raw JSON, but the API
// still counts the markers of the blocks in it.
func (w *walk) nested(depth int, sec uint64) error {
	r := &w.r
	switch k := r.Peek(); {
	case k == wire.KindString:
		r.EstimateString(&w.c)
	case k == wire.KindArray && depth < maxBlockDepth:
		_, err := w.blocks(nil, -1, wire.TokenCounter{}, depth+1, sec)
		return err
	case k == wire.KindArray && !w.estimating:
		from := r.Pos()
		w.markers(sec)
		if r.Err() == nil {
			w.c.Add(r.Slice(from, r.Pos()))
		}
	default:
		r.EstimateValue(&w.c)
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
// {"type":"base64"|"text"|"content"|"url"|"file", ...}, a span validated
// when the block was walked. It is read a second time here, with its own
// reader, because the block's type may follow it; its markers were counted on
// the first reading, so this one records nothing.
func (w *walk) estimateSource(src []byte, depth int) error {
	var sw walk
	sw.r.Reset(src)
	sw.c, sw.estimating = w.c, true
	err := sw.sourceTokens(depth)
	w.c = sw.c
	return err
}

func (w *walk) sourceTokens(depth int) error {
	r := &w.r
	if r.Peek() != wire.KindObject {
		r.EstimateValue(&w.c)
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
			if err := w.nested(depth, 0); err != nil {
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
		d.Reset(r.Slice(data[0], data[1]))
		estimateText(&d, &w.c)
	case string(typ) == "base64" && data[0] >= 0:
		w.c.AddTokens(wire.Base64DocumentTokens(data[1] - data[0]))
	default:
		w.c.AddTokens(wire.DocumentTokens)
	}
	return nil
}
