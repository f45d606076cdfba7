package openai

import (
	"strconv"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Explicit prompt-cache breakpoints, from gpt-5.6 on
// (https://platform.openai.com/docs/guides/prompt-caching; the
// prompt_cache_options and prompt_cache_breakpoint fields of
// https://platform.openai.com/docs/api-reference/responses/create and
// https://platform.openai.com/docs/api-reference/chat/create).
//
// OpenAI caches prompt prefixes by itself, but on these models a content
// part may also carry "prompt_cache_breakpoint": {"mode": "explicit"}, and
// the prefix up to it is written to the cache (billed at 1.25× input on
// gpt-5.6) and read back at the cached rate by a later request that starts
// with it. The gateway places such breakpoints as the Anthropic injector
// places cache_control (extproc/dialect/anthropic/cache.go), for the same
// reasons:
//
//   - Two candidates, in prompt order: the end of the leading system and
//     developer messages (the stable instructions every request of a
//     conversation repeats), and the end of the previous user turn (the
//     last user message before the final message). The final message is new
//     on every request, so a breakpoint there would write a prefix no later
//     request reads; the previous turn's prefix is what the next request of
//     the conversation starts with. A candidate whose last part cannot carry
//     a marker passes to the part before it in the same messages.
//   - The count never exceeds what the API writes. In the default
//     ("implicit") mode it writes one implicit breakpoint and the latest 3
//     explicit ones: a fourth marker would push the client's earliest out.
//     Markers are added only while the client's and the added ones total at
//     most 3, and a part the client marked (or set to null) is left alone.
//   - A request whose prompt_cache_options.mode is "explicit" is never
//     touched: that mode caches only at the client's markers, and with none
//     it caches nothing, so the client has said exactly which prefixes to
//     pay to write; an added marker would overrule it. Any other value or
//     shape of prompt_cache_options is the API's to judge, not one to guess
//     at.
//   - "30m" is the only TTL, and markers inherit the request's; the
//     policy's ttl (5m or 1h, Anthropic's) does not apply, and nothing is
//     written to prompt_cache_options.
//   - A breakpoint whose estimated prefix is shorter than the minimum the
//     gate passes (accounting.MinCacheTokens: OpenAI's 1024) is not placed.
//   - Bytes are spliced, never re-serialised, in the same single copy as the
//     model rewrite: a string content becomes a one-part array to carry the
//     marker, every other byte stays the client's.
//
// The parse records the candidates and the client's markers in the
// request's wire.CacheIndex (cacheWalk); placing reads only that.

// The API's limits on the explicit breakpoints that count.
const (
	// ImplicitModeBreakpoints is how many of the latest explicit
	// breakpoints the default mode writes, besides its implicit one.
	ImplicitModeBreakpoints = 3
	// ExplicitModeBreakpoints is how many explicit mode writes; the gateway
	// adds none there, so only a client reaches it.
	ExplicitModeBreakpoints = 4
)

// The marker added, just before the closing brace of a non-empty part, and
// the array a string content becomes around it.
const (
	breakpointMarker = `,"prompt_cache_breakpoint":{"mode":"explicit"}`
	chatTextOpen     = `[{"type":"text","text":`
	inputTextOpen    = `[{"type":"input_text","text":`
	partClose        = `}]`
)

// BreakpointLimit is the number of explicit breakpoints the API writes in a
// mode: 3 in the default mode, 4 in explicit mode, 0 for a mode the parse
// does not know.
func BreakpointLimit(m wire.CacheMode) int {
	switch m {
	case wire.CacheModeDefault:
		return ImplicitModeBreakpoints
	case wire.CacheModeExplicit:
		return ExplicitModeBreakpoints
	}
	return 0
}

// cacheWalk is what the parse records for breakpoint placement, as the
// messages (Chat) or input items (Responses) stream past.
type cacheWalk struct {
	ci          wire.CacheIndex
	start       wire.TokenCounter   // the counter when the messages began
	msg         wire.CacheCandidate // the current message's last carrier
	leading     bool                // still in the leading system/developer messages
	last        userTurn            // the last user message so far
	prev        userTurn            // the one before it
	optionsSeen int                 // prompt_cache_options members seen
}

type userTurn struct {
	ok   bool
	cand wire.CacheCandidate
}

// beginMessages marks the start of the messages, whose estimate from here
// each candidate records.
func (w *cacheWalk) beginMessages(c *wire.TokenCounter) {
	if w != nil {
		w.start, w.leading = *c, true
	}
}

// beginMessage starts message n.
func (w *cacheWalk) beginMessage(n int) {
	if w != nil {
		w.msg = wire.CacheCandidate{Msg: n, Block: -1}
	}
}

// beginContent starts a message's content. A message with two content
// members is read by the provider's decoder by its last one, so only the
// last one's parts are candidates.
func (w *cacheWalk) beginContent() {
	if w != nil {
		w.msg.Found = false
	}
}

// part records content part i of the current message, spanning
// [start, end): a client marker counts; a part that can carry one becomes
// the message's candidate. inMessage is false for parts outside a message
// (a function call's output), whose markers count but which are no
// candidate.
func (w *cacheWalk) part(i, start, end int, carrier bool, marker wire.CacheMarker, inMessage bool, c *wire.TokenCounter) {
	if w == nil {
		return
	}
	if marker == wire.MarkerSet {
		w.ci.Existing++
	}
	if !inMessage || !carrier {
		return
	}
	w.msg.Found, w.msg.Str, w.msg.Block = true, false, i
	w.msg.Marker = marker
	w.msg.Span = wire.Span{Start: start, End: end}
	w.msg.Tokens = c.Since(w.start)
}

// str records a string content spanning [start, end), quotes included,
// which becomes a one-part array to carry a marker unless it is empty.
func (w *cacheWalk) str(start, end int, c *wire.TokenCounter) {
	if w == nil || end-start <= 2 {
		return
	}
	w.msg.Found, w.msg.Str, w.msg.Block = true, true, -1
	w.msg.Marker = wire.MarkerNone
	w.msg.Span = wire.Span{Start: start, End: end}
	w.msg.Tokens = c.Since(w.start)
}

// endMessage files the current message by its role (still escaped).
func (w *cacheWalk) endMessage(role []byte) {
	if w == nil {
		return
	}
	switch {
	case w.leading && (wire.RawEqual(role, "system") || wire.RawEqual(role, "developer")):
		w.ci.System.Present = true
		if w.msg.Found {
			w.ci.System = w.msg
			w.ci.System.Present = true
		}
	default:
		w.leading = false
	}
	if wire.RawEqual(role, "user") {
		w.prev, w.last = w.last, userTurn{ok: true, cand: w.msg}
	}
}

// endItem files an input item that is not a message (a function call, its
// output, a reasoning item): the leading instructions end there.
func (w *cacheWalk) endItem() {
	if w != nil {
		w.leading = false
	}
}

// endMessages picks the turn candidate once all n messages (or items) are
// read: the last user message when it is not the final one, else the one
// before it.
func (w *cacheWalk) endMessages(n int) {
	if w == nil {
		return
	}
	switch {
	case w.last.ok && w.last.cand.Msg < n-1:
		w.ci.Turn = w.last.cand
	case w.prev.ok:
		w.ci.Turn = w.prev.cand
	default:
		return
	}
	w.ci.Turn.Present = true
}

// options reads prompt_cache_options into the mode: null or an object
// whose mode is absent, null or "implicit" is the default; "explicit" is
// explicit; anything else (another mode, another type, a duplicated key or
// member) is CacheModeOther, which stands injection down.
func (w *cacheWalk) options(r *wire.Reader) {
	w.optionsSeen++
	mode := wire.CacheModeOther
	switch r.Peek() {
	case wire.KindNull:
		r.Skip()
		mode = wire.CacheModeDefault
	case wire.KindObject:
		mode = wire.CacheModeDefault
		modes := 0
		it := r.Object()
		for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
			if string(key) != "mode" {
				r.Skip()
				continue
			}
			modes++
			switch r.Peek() {
			case wire.KindNull:
				r.Skip()
			case wire.KindString:
				raw, _ := r.RawString()
				switch {
				case wire.RawEqual(raw, "implicit"):
				case wire.RawEqual(raw, "explicit"):
					mode = wire.CacheModeExplicit
				default:
					mode = wire.CacheModeOther
				}
			default:
				r.Skip()
				mode = wire.CacheModeOther
			}
		}
		if modes > 1 {
			mode = wire.CacheModeOther // read one way here, maybe another upstream
		}
	default:
		r.Skip()
	}
	if w.optionsSeen > 1 {
		mode = wire.CacheModeOther
	}
	w.ci.Mode = mode
}

// peekMarker reads the state of a prompt_cache_breakpoint value without
// consuming it: null is the client's "none here", anything else a marker
// (a malformed one is the API's to reject; counting it keeps the total
// within the limit either way).
func peekMarker(r *wire.Reader) wire.CacheMarker {
	if r.Peek() == wire.KindNull {
		return wire.MarkerNull
	}
	return wire.MarkerSet
}

// CacheResult reports what breakpoint placement did, for logs and metrics.
type CacheResult struct {
	// Existing counts the client's markers; Added those injected.
	Existing, Added int
	// Skipped says, for each candidate not used, why; e.g.
	// "messages.0.content.2: client marker kept".
	Skipped []string
}

// placeBreakpoints adds to out the insertions that place explicit
// breakpoints on the candidates of ci, as the comment at the top of this
// file describes, for a request to model; list names the messages in
// skipped reasons ("messages", "input") and textOpen opens the one-part
// array a string content becomes. A model without explicit breakpoints
// gets none and no reasons: it caches automatically, and there is nothing
// to skip.
func placeBreakpoints(ci *wire.CacheIndex, model, list, textOpen string, minTokens int64, out *wire.Edits) (CacheResult, error) {
	res := CacheResult{Existing: ci.Existing}
	if !accounting.ExplicitCacheBreakpoints(model) {
		return res, nil
	}
	need := max(minTokens, 0)
	free := BreakpointLimit(ci.Mode) - ci.Existing
	for _, c := range [...]*wire.CacheCandidate{&ci.System, &ci.Turn} {
		if !c.Present {
			continue
		}
		why, tok := skipNone, int64(0)
		switch {
		case ci.Mode == wire.CacheModeExplicit:
			why = skipExplicitMode
		case ci.Mode == wire.CacheModeOther:
			why = skipUnknownMode
		case !c.Found:
			why = skipNoCarrier
		case c.Marker == wire.MarkerSet:
			why = skipClientMarker
		case c.Marker == wire.MarkerNull:
			why = skipClientNull
		case free <= 0:
			why = skipAllInUse
		}
		if why == skipNone {
			if tok = ci.ToolsTokens + ci.SystemTokens + c.Tokens; tok < need {
				why = skipBelowMinimum
			}
		}
		if why != skipNone {
			if res.Skipped == nil {
				res.Skipped = make([]string, 0, 2)
			}
			res.Skipped = append(res.Skipped, skipped(list, c, why, tok, need, BreakpointLimit(ci.Mode)))
			continue
		}
		var ok bool
		if c.Str {
			ok = out.Add(c.Span.Start, c.Span.Start, textOpen) && out.Add(c.Span.End, c.Span.End, breakpointMarker+partClose)
		} else {
			ok = out.Add(c.Span.End-1, c.Span.End-1, breakpointMarker)
		}
		if !ok {
			return res, wire.ErrTooManyEdits
		}
		free--
		res.Added++
	}
	return res, nil
}

// skipReason is why a candidate gets no breakpoint.
type skipReason uint8

const (
	skipNone skipReason = iota
	skipNoCarrier
	skipClientMarker
	skipClientNull
	skipAllInUse
	skipBelowMinimum
	skipExplicitMode
	skipUnknownMode
)

// skipped is the EditReport.CacheSkipped entry for c: its location, then
// why; e.g. "messages.0.content.2: client marker kept".
func skipped(list string, c *wire.CacheCandidate, why skipReason, tok, need int64, limit int) string {
	var buf [160]byte
	b := append(buf[:0], list...)
	if c.Msg >= 0 {
		b = strconv.AppendInt(append(b, '.'), int64(c.Msg), 10)
		if c.Found {
			b = append(b, ".content"...)
		}
	}
	if c.Found && c.Block >= 0 {
		b = strconv.AppendInt(append(b, '.'), int64(c.Block), 10)
	}
	b = append(b, ": "...)
	switch why {
	case skipNoCarrier:
		b = append(b, "no content part can carry a marker"...)
	case skipClientMarker:
		b = append(b, "client marker kept"...)
	case skipClientNull:
		b = append(b, "client set prompt_cache_breakpoint to null"...)
	case skipAllInUse:
		b = strconv.AppendInt(append(b, "all "...), int64(limit), 10)
		b = append(b, " breakpoints in use"...)
	case skipBelowMinimum:
		b = strconv.AppendInt(append(b, "prefix ~"...), tok, 10)
		b = strconv.AppendInt(append(b, " tokens, below the "...), need, 10)
		b = append(b, " minimum"...)
	case skipExplicitMode:
		b = append(b, "prompt_cache_options.mode is explicit: the client places every breakpoint"...)
	case skipUnknownMode:
		b = append(b, "prompt_cache_options not understood: left to the API"...)
	}
	return string(b)
}
