package anthropic

import (
	"fmt"
	"strconv"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Prompt-cache injection (cache_control rules:
// https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching).
//
// The gateway adds cache_control breakpoints a client did not set, so a
// tenant's repeated prefix is billed at the cache-read rate. Each rule below
// answers a way other gateways broke requests or gave up:
//
//   - The API rejects a request with more than 4 breakpoints (400 "A maximum
//     of 4 blocks with cache_control may be provided"), counting tools,
//     system, message blocks, blocks nested in tool_result content, and the
//     top-level cache_control of automatic caching. Every one of them is
//     counted, and the total never exceeds MaxCacheBreakpoints (LiteLLM hit
//     both: https://github.com/BerriAI/litellm/pull/30480,
//     https://github.com/BerriAI/litellm/issues/38679).
//   - Injection stands down per block, never per request: a client marker
//     stays as it is, and the remaining slots are still filled (unlike
//     https://github.com/BerriAI/litellm/issues/40675).
//   - 1h breakpoints must precede 5m ones; the TTL of each added marker is
//     chosen so the order of all markers stays valid (see ttlFor).
//   - Bytes are spliced, never re-serialised: the cache matches prefixes
//     byte for byte, and the client's own caching must keep working.
//
// ParseRequest's walk records the markers and candidates (wire.CacheIndex);
// planning here reads only that index, so placing breakpoints costs no pass
// over the body, and wire.Apply makes the one copy.

// MaxCacheBreakpoints is the API's limit on cache_control markers per
// request, the top-level (automatic caching) one included.
const MaxCacheBreakpoints = 4

// CacheOptions configures InjectCacheControl.
type CacheOptions struct {
	// TTL of the markers added: "5m" (the API default; "" means 5m) or "1h".
	TTL string
	// MinTokens is the model's minimum cacheable prefix
	// (accounting.MinCacheTokens); a breakpoint whose estimated prefix is
	// shorter is not placed: the API would silently not cache it, and it
	// would hold a slot a longer prefix could use. 0 places breakpoints
	// whatever their length.
	MinTokens int64
}

// CacheResult reports what InjectCacheControl did, for logs and metrics.
type CacheResult struct {
	// Changed reports that the body was rewritten.
	Changed bool
	// Existing counts the client's markers, the top-level one included.
	Existing int
	// Added counts the markers injected.
	Added int
	// Skipped says, for each candidate breakpoint not used, why; e.g.
	// "system.0: client marker kept" or "tools.2: prefix ~310 tokens, below
	// the 1024 minimum". Built only when a candidate is skipped.
	Skipped []string
}

// The markers injected. Each is spliced in just before the closing brace of
// a non-empty object, so its leading comma always separates it from a
// member.
const (
	marker5m = `,"cache_control":{"type":"ephemeral"}`
	marker1h = `,"cache_control":{"type":"ephemeral","ttl":"1h"}`
	// A string system prompt or message content becomes one text block:
	// textOpen goes before the string, a marker and textClose after it.
	textOpen  = `[{"type":"text","text":`
	textClose = `}]`
)

// cacheTTL reads the TTL of the markers to add: false for 5m, true for 1h.
func cacheTTL(ttl string) (long bool, err error) {
	switch ttl {
	case "", "5m":
		return false, nil
	case "1h":
		return true, nil
	}
	return false, fmt.Errorf("anthropic: cache ttl %q: must be 5m or 1h", ttl)
}

// InjectCacheControl adds Anthropic prompt-cache breakpoints to a Messages
// API request body, at most one per candidate, in prefix order: the last tool
// definition, the last system block, and the last block of the previous user
// turn (the last user message before the final message). A candidate block
// that cannot carry a marker (thinking, redacted_thinking, empty text, a
// deferred tool) passes to the previous block of the same list. A string
// system prompt or string content becomes a one-text-block array.
//
// The client's markers are counted everywhere the API counts them and kept;
// a block with a client marker (or "cache_control": null) is left alone and
// its slot not reused. Markers are added only while the total stays within
// MaxCacheBreakpoints, only where the estimated prefix (tools, system,
// messages up to and including the block, estimated as ParseRequest does)
// reaches opts.MinTokens, and only with a TTL the API accepts in that
// position: a 1h policy places 5m markers after a client's 5m marker, a 5m
// policy places 1h markers before a client's 1h marker (which costs nothing:
// that span is billed as a 1h write anyway), and a slot between a client 5m
// and a later client 1h marker is skipped, the request already being one the
// API rejects.
//
// Every byte outside the inserted spans is preserved. An unmodified request
// returns body itself with res.Changed false. A malformed body yields an
// error matching wire.ErrInvalidRequest; an unknown TTL a plain error. It is
// a convenience for tests and tools, parse and edit in one call, on the
// bodies SetModel takes; the gate uses Messages.Edit.
func InjectCacheControl(body []byte, opts CacheOptions) (out []byte, res CacheResult, err error) {
	long, err := cacheTTL(opts.TTL)
	if err != nil {
		return body, res, err
	}
	req, err := parseRequest(body, true)
	if err != nil {
		return body, res, err
	}
	var edits wire.Edits
	if res, err = placeBreakpoints(&req.Index.Cache, long, opts.MinTokens, &edits); err != nil {
		return body, CacheResult{}, err
	}
	if out, err = wire.Apply(body, &edits); err != nil {
		return body, CacheResult{}, err
	}
	return out, res, nil
}

// placeBreakpoints adds to out the insertions that place breakpoints on the
// candidates of ci, as InjectCacheControl describes, with long (1h) or 5m
// markers and a minimum prefix of minTokens.
func placeBreakpoints(ci *wire.CacheIndex, long bool, minTokens int64, out *wire.Edits) (CacheResult, error) {
	res := CacheResult{Existing: ci.Existing}
	need := max(minTokens, 0)
	first5m, last1h := ci.First5m, ci.Last1h // with the markers added so far
	free := MaxCacheBreakpoints - ci.Existing
	for sec, c := range [...]*wire.CacheCandidate{&ci.Tools, &ci.System, &ci.Turn} {
		if !c.Present {
			continue
		}
		why, tok := skipNone, int64(0)
		switch {
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
			if tok = prefixTokens(ci, sec, c); tok < need {
				why = skipBelowMinimum
			}
		}
		var t1h bool
		if why == skipNone {
			t1h, why = ttlFor(ci, first5m, last1h, c.Ord, long)
		}
		if why != skipNone {
			if res.Skipped == nil {
				res.Skipped = make([]string, 0, 3)
			}
			res.Skipped = append(res.Skipped, skipped(sec, c, why, tok, need))
			continue
		}
		mark, closeText := marker5m, marker5m+textClose
		if t1h {
			mark, closeText = marker1h, marker1h+textClose
			last1h = max(last1h, c.Ord)
		} else if first5m == 0 || c.Ord < first5m {
			first5m = c.Ord
		}
		var ok bool
		if c.Str {
			ok = out.Add(c.Span.Start, c.Span.Start, textOpen) && out.Add(c.Span.End, c.Span.End, closeText)
		} else {
			ok = out.Add(c.Span.End-1, c.Span.End-1, mark)
		}
		if !ok {
			return res, wire.ErrTooManyEdits
		}
		free--
		res.Added++
	}
	res.Changed = res.Added > 0
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
	skipTTLOrder
	skipAutoTTL
)

// ttlFor chooses whether a marker added at ordinal ord is long (1h), given
// the earliest 5m and the latest 1h marker so far. 1h markers must precede
// 5m markers: a 5m marker earlier forces 5m, a 1h marker later forces 1h
// (that span is written at the 1h rate anyway, so this costs nothing), both
// at once mean the client's markers are already out of order. With
// automatic caching and a final message that cannot carry a marker, the
// automatic breakpoint walks back and may land on the block chosen here;
// the API rejects a different TTL there, so the marker takes the automatic
// one's.
func ttlFor(ci *wire.CacheIndex, first5m, last1h, ord uint64, want bool) (bool, skipReason) {
	earlier5m := first5m != 0 && first5m < ord
	later1h := last1h > ord
	switch {
	case earlier5m && later1h:
		return false, skipTTLOrder
	case later1h:
		want = true
	case earlier5m:
		want = false
	}
	if ci.Auto && !ci.FinalCanCarry && want != ci.AutoLong {
		if !ci.AutoLong && later1h {
			return false, skipAutoTTL
		}
		want = ci.AutoLong
	}
	return want, skipNone
}

// The sections, in prompt order, as placeBreakpoints visits their
// candidates.
var sectionNames = [...]string{"tools", "system", "messages"}

// prefixTokens is the estimated prompt up to and including c, the candidate
// of section sec: the sections before it whole, then its own up to c. Each
// section is rounded up on its own, as it always was (wire.TokenCounter.Since).
func prefixTokens(ci *wire.CacheIndex, sec int, c *wire.CacheCandidate) int64 {
	switch sec {
	case 0:
		return c.Tokens
	case 1:
		return ci.ToolsTokens + c.Tokens
	}
	return ci.ToolsTokens + ci.SystemTokens + c.Tokens
}

// skipped is the CacheSkipped entry for c: its location, then why; e.g.
// "system.0: client marker kept" or "tools: prefix ~310 tokens, below the
// 1024 minimum". It is built on the stack and allocated once.
func skipped(sec int, c *wire.CacheCandidate, why skipReason, tok, need int64) string {
	var buf [160]byte
	b := append(buf[:0], sectionNames[sec]...)
	if c.Msg >= 0 {
		b = strconv.AppendInt(append(b, '.'), int64(c.Msg), 10)
		if c.Block >= 0 || c.Str {
			b = append(b, ".content"...)
		}
	}
	if c.Block >= 0 {
		b = strconv.AppendInt(append(b, '.'), int64(c.Block), 10)
	}
	b = append(b, ": "...)
	switch why {
	case skipNoCarrier:
		b = append(b, "no block can carry a marker"...)
	case skipClientMarker:
		b = append(b, "client marker kept"...)
	case skipClientNull:
		b = append(b, "client set cache_control to null"...)
	case skipAllInUse:
		b = strconv.AppendInt(append(b, "all "...), MaxCacheBreakpoints, 10)
		b = append(b, " breakpoints in use"...)
	case skipBelowMinimum:
		b = strconv.AppendInt(append(b, "prefix ~"...), tok, 10)
		b = strconv.AppendInt(append(b, " tokens, below the "...), need, 10)
		b = append(b, " minimum"...)
	case skipTTLOrder:
		b = append(b, "client markers put a 5m breakpoint before a 1h one"...)
	case skipAutoTTL:
		b = append(b, "automatic caching (5m) may land here, after a 1h breakpoint"...)
	}
	return string(b)
}
