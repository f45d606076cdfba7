package anthropic

import "github.com/tokenwarden/tokenwarden/extproc/dialect/wire"

// What ParseRequest's walk records for prompt-cache planning
// (placeBreakpoints), in
// the same pass that validates and estimates: the client's markers, counted
// everywhere the API counts them (tools, system, message blocks, blocks
// nested in tool_result and document content, the top-level cache_control of
// automatic caching), each with its ordinal and TTL, and for each section the
// last block that can carry a marker with the estimated prompt up to it. See
// https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching.

// Ordinals order markers and candidates by where they fall in the prompt,
// which is tools, system, messages whatever the key order of the body: the
// section in the high byte, the visit counter below it (wire.CacheIndex).
const (
	secTools    uint64 = 1 << 56
	secSystem   uint64 = 2 << 56
	secMessages uint64 = 3 << 56
	ordAuto     uint64 = 4 << 56 // automatic caching: the last cacheable block
)

// block is what the walk learns of one block object (or tool definition).
type block struct {
	start, end int
	members    int
	typ        []byte
	hasText    bool
	blankText  bool
	deferred   bool
	marker     wire.CacheMarker
	long       bool // the marker's ttl is "1h"
	ord        uint64
}

// canCarry reports whether a marker may be placed on the block. Blocks the
// API does not cache on their own (thinking), or rejects a marker on (empty
// text), pass the slot to the block before them.
func (b *block) canCarry(tool bool) bool {
	if b.members == 0 {
		return false
	}
	if tool {
		// Deferred tools are left out of the cached prefix (tool search),
		// so a marker there would not mark what it seems to.
		return !b.deferred
	}
	switch {
	case len(b.typ) == 0, wire.RawEqual(b.typ, "thinking"), wire.RawEqual(b.typ, "redacted_thinking"):
		return false
	case wire.RawEqual(b.typ, "text"):
		return b.hasText && !b.blankText
	}
	return true
}

// candidate makes b, block idx of message msg (-1 outside messages), the
// section's candidate, its section estimated at tokens up to it.
func (b *block) candidate(c *wire.CacheCandidate, idx, msg int, tokens int64) {
	c.Found, c.Str = true, false
	c.Block, c.Msg = idx, msg
	c.Ord, c.Marker = b.ord, b.marker
	c.Span = wire.Span{Start: b.start, End: b.end}
	c.Tokens = tokens
}

// turn is a user message and its candidate, while the messages are walked.
type turn struct {
	user  bool
	index int
	cand  wire.CacheCandidate
}

// next hands out the ordinal of the next block of section sec.
func (w *walk) next(sec uint64) uint64 {
	w.seq++
	return sec | w.seq
}

// closeBlock records the end of a block just consumed and, when the walk
// records, its ordinal and marker. A block's ordinal comes after those of
// the blocks nested in it.
func (w *walk) closeBlock(b *block, sec uint64) {
	b.end = w.r.Pos()
	if w.estimating {
		return
	}
	b.ord = w.next(sec)
	if b.marker == wire.MarkerSet {
		w.mark(b.ord, b.long)
	}
}

// mark records a client marker at ord.
func (w *walk) mark(ord uint64, long bool) {
	ci := &w.ci
	ci.Existing++
	switch {
	case long:
		ci.Last1h = max(ci.Last1h, ord)
	case ci.First5m == 0 || ord < ci.First5m:
		ci.First5m = ord
	}
}

// marker consumes a cache_control value. null is no marker; anything else
// counts as one (a malformed one is the API's to reject, and counting it
// keeps the total under the limit either way). Only ttl "1h" is long.
func (w *walk) marker(b *block) {
	r := &w.r
	switch r.Peek() {
	case wire.KindNull:
		r.Skip()
		if b.marker == wire.MarkerNone {
			b.marker = wire.MarkerNull
		}
		return
	case wire.KindObject:
	default:
		r.Skip()
		b.marker, b.long = wire.MarkerSet, false
		return
	}
	b.marker, b.long = wire.MarkerSet, false
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if string(key) == "ttl" && r.Peek() == wire.KindString {
			raw, _ := r.RawString()
			if wire.RawEqual(raw, "1h") {
				b.long = true
			}
			continue
		}
		r.Skip()
	}
}

// automatic consumes the top-level cache_control of automatic caching, which
// takes a slot and whose breakpoint lands on the last cacheable block.
func (w *walk) automatic() {
	var b block
	w.marker(&b)
	if b.marker == wire.MarkerSet {
		w.ci.Auto, w.ci.AutoLong = true, b.long
		w.mark(ordAuto, b.long)
	}
}

// source consumes a block's source, counting the markers of the blocks in
// its content (documents of search results), and returns its span.
func (w *walk) source(sec uint64) (start, end int) {
	r := &w.r
	if w.estimating || r.Peek() != wire.KindObject {
		return r.Skip()
	}
	start = r.Pos()
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if string(key) == "content" {
			w.markers(sec)
		} else {
			r.Skip()
		}
	}
	return start, r.Pos()
}

// markers consumes a content value only for the markers of the blocks in
// it, however deep: content below maxBlockDepth, and a source's.
func (w *walk) markers(sec uint64) {
	r := &w.r
	if r.Peek() != wire.KindArray {
		r.Skip()
		return
	}
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() != wire.KindObject {
			r.Skip()
			continue
		}
		var b block
		b.start = r.Pos()
		bit := r.Object()
		for key, ok := r.NextKey(&bit); ok; key, ok = r.NextKey(&bit) {
			switch string(key) {
			case "cache_control":
				w.marker(&b)
			case "content":
				w.markers(sec)
			case "source":
				w.source(sec)
			default:
				r.Skip()
			}
		}
		w.closeBlock(&b, sec)
	}
}

// blank reports whether an escaped JSON string body decodes to nothing but
// whitespace; the API rejects such text blocks, and they cannot be cached.
func blank(raw []byte) bool {
	for i := 0; i < len(raw); i++ {
		switch raw[i] {
		case ' ', '\t', '\n', '\r':
		case '\\':
			if i+1 < len(raw) && (raw[i+1] == 'n' || raw[i+1] == 't' || raw[i+1] == 'r') {
				i++
				continue
			}
			return false
		default:
			return false
		}
	}
	return true
}
