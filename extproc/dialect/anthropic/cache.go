package anthropic

import (
	"fmt"
	"slices"
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

// MaxCacheBreakpoints is the API's limit on cache_control markers per
// request, the top-level (automatic caching) one included.
const MaxCacheBreakpoints = 4

// CacheOptions configures InjectCacheControl.
type CacheOptions struct {
	// TTL of the markers added: "5m" (the API default; "" means 5m) or "1h".
	TTL string
	// MinTokens is the model's minimum cacheable prefix
	// (accounting.MinCacheTokens); a breakpoint whose estimated prefix is shorter
	// is not placed: the API would silently not cache it, and it would hold a
	// slot a longer prefix could use. 0 places breakpoints whatever their
	// length.
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

type ttl uint8

const (
	ttl5m ttl = iota
	ttl1h
)

// Markers are ordered by where they fall in the prompt, which is tools,
// system, messages whatever the key order of the body: an ordinal is the
// section in the high byte and a visit counter below it.
const (
	secTools    uint64 = 1 << 56
	secSystem   uint64 = 2 << 56
	secMessages uint64 = 3 << 56
	ordAuto     uint64 = 4 << 56 // automatic caching: the last cacheable block
	ordNone     uint64 = 1<<64 - 1
)

type ccState uint8

const (
	ccNone ccState = iota
	ccNull         // "cache_control": null — the client chose no marker here
	ccSet
)

// candidate is a block a breakpoint may be placed on.
type candidate struct {
	found bool // a block that can carry a marker exists
	// name locates the block for Skipped: section, then indexes.
	section      string
	msg, idx     int // message index (messages only) and block index, -1 for none
	ord          uint64
	cc           ccState
	str          bool  // a string to convert to a text block
	start, end   int   // the block's (or string's) span in the body
	prefixTokens int64 // estimate within its own section, capped (see scan.estimating)
}

// blockInfo is what one scan of a block object yields.
type blockInfo struct {
	start, end int
	members    int
	typ        []byte
	hasText    bool
	blankText  bool
	deferred   bool
	cc         ccState
	ttl        ttl
	ord        uint64
}

func (b *blockInfo) canCarry(tool bool) bool {
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

// userTurn is the breakpoint candidate of one user message.
type userTurn struct {
	present bool
	index   int
	cand    candidate
}

// scan holds everything learnt in the single pass over the body.
type scan struct {
	body     []byte
	need     int64 // opts.MinTokens: estimation stops once a section reaches it
	seq      uint64
	existing int
	first5m  uint64 // ordinal of the earliest 5m marker, ordNone if none
	last1h   uint64 // ordinal of the latest 1h marker, 0 if none
	auto     bool
	autoTTL  ttl

	tools, system       candidate
	toolsTok, systemTok int64
	lastUser, prevUser  userTurn
	messages            int  // length of the messages array
	finalCanCarry       bool // the final message has a block that can carry a marker
	sawSystem           bool
	toolsCount          int
}

// edit is one insertion: parts spliced in at offset at of the input.
type edit struct {
	at   int
	text string
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
// error matching wire.ErrInvalidRequest; an unknown TTL a plain error.
func InjectCacheControl(body []byte, opts CacheOptions) (out []byte, res CacheResult, err error) {
	edits, n, res, err := planCache(body, opts)
	if err != nil || n == 0 {
		return body, res, err
	}
	es := edits[:n]
	slices.SortStableFunc(es, func(a, b edit) int { return a.at - b.at })
	size := len(body)
	for _, e := range es {
		size += len(e.text)
	}
	out = make([]byte, 0, size)
	prev := 0
	for _, e := range es {
		out = append(out, body[prev:e.at]...)
		out = append(out, e.text...)
		prev = e.at
	}
	out = append(out, body[prev:]...)
	res.Changed = true
	return out, res, nil
}

// planCache decides the insertions without applying them; they are returned
// in placement order, not body order.
func planCache(body []byte, opts CacheOptions) (edits [6]edit, n int, res CacheResult, err error) {
	var want ttl
	switch opts.TTL {
	case "", "5m":
		want = ttl5m
	case "1h":
		want = ttl1h
	default:
		return edits, 0, res, fmt.Errorf("anthropic: cache ttl %q: must be 5m or 1h", opts.TTL)
	}
	s := scan{body: body, need: max(opts.MinTokens, 0), first5m: ordNone}
	if err := s.run(); err != nil {
		return edits, 0, res, err
	}
	res.Existing = s.existing

	var cands [3]*candidate
	nc := 0
	if s.toolsCount > 0 {
		cands[nc] = &s.tools
		nc++
	}
	if s.sawSystem {
		cands[nc] = &s.system
		nc++
	}
	if u := s.userCandidate(); u != nil {
		cands[nc] = &u.cand
		nc++
	}
	free := MaxCacheBreakpoints - s.existing
	for _, c := range cands[:nc] {
		var why string
		switch {
		case !c.found:
			why = "no block can carry a marker"
		case c.cc == ccSet:
			why = "client marker kept"
		case c.cc == ccNull:
			why = "client set cache_control to null"
		case free <= 0:
			why = fmt.Sprintf("all %d breakpoints in use", MaxCacheBreakpoints)
		}
		if why == "" {
			if tok := s.prefixTokens(c); tok < s.need {
				why = fmt.Sprintf("prefix ~%d tokens, below the %d minimum", tok, s.need)
			}
		}
		var t ttl
		if why == "" {
			t, why = s.ttlFor(c.ord, want)
		}
		if why != "" {
			res.Skipped = append(res.Skipped, c.skipped(why))
			continue
		}
		mark, closeText := marker5m, marker5m+textClose
		if t == ttl1h {
			mark, closeText = marker1h, marker1h+textClose
			s.last1h = max(s.last1h, c.ord)
		} else {
			s.first5m = min(s.first5m, c.ord)
		}
		if c.str {
			edits[n] = edit{at: c.start, text: textOpen}
			edits[n+1] = edit{at: c.end, text: closeText}
			n += 2
		} else {
			edits[n] = edit{at: c.end - 1, text: mark}
			n++
		}
		free--
		res.Added++
	}
	return edits, n, res, nil
}

// ttlFor chooses the TTL of a marker added at ordinal ord. 1h markers must
// precede 5m markers: a 5m marker earlier forces 5m, a 1h marker later forces
// 1h (that span is written at the 1h rate anyway, so this costs nothing),
// both at once mean the client's markers are already out of order. With
// automatic caching and a final message that cannot carry a marker, the
// automatic breakpoint walks back and may land on the block chosen here;
// the API rejects a different TTL there, so the marker takes the automatic
// one's.
func (s *scan) ttlFor(ord uint64, want ttl) (ttl, string) {
	earlier5m := s.first5m < ord
	later1h := s.last1h > ord
	switch {
	case earlier5m && later1h:
		return 0, "client markers put a 5m breakpoint before a 1h one"
	case later1h:
		want = ttl1h
	case earlier5m:
		want = ttl5m
	}
	if s.auto && !s.finalCanCarry && want != s.autoTTL {
		if s.autoTTL == ttl5m && later1h {
			return 0, "automatic caching (5m) may land here, after a 1h breakpoint"
		}
		want = s.autoTTL
	}
	return want, ""
}

// prefixTokens is the estimated prompt up to and including c.
func (s *scan) prefixTokens(c *candidate) int64 {
	switch c.ord & (0xff << 56) {
	case secTools:
		return c.prefixTokens
	case secSystem:
		return s.toolsTok + c.prefixTokens
	}
	return s.toolsTok + s.systemTok + c.prefixTokens
}

// userCandidate returns the previous user turn: the last user message
// before the final message.
func (s *scan) userCandidate() *userTurn {
	switch {
	case s.lastUser.present && s.lastUser.index < s.messages-1:
		return &s.lastUser
	case s.prevUser.present:
		return &s.prevUser
	}
	return nil
}

// skipped is the Skipped entry for c: its location, then why.
func (c *candidate) skipped(why string) string {
	b := make([]byte, 0, 64)
	b = append(b, c.section...)
	if c.msg >= 0 {
		b = strconv.AppendInt(append(b, '.'), int64(c.msg), 10)
		if c.idx >= 0 || c.str {
			b = append(b, ".content"...)
		}
	}
	if c.idx >= 0 {
		b = strconv.AppendInt(append(b, '.'), int64(c.idx), 10)
	}
	b = append(append(b, ": "...), why...)
	return string(b)
}

// mark records a client marker.
func (s *scan) mark(ord uint64, t ttl) {
	s.existing++
	if t == ttl5m {
		s.first5m = min(s.first5m, ord)
	} else {
		s.last1h = max(s.last1h, ord)
	}
}

func (s *scan) next(sec uint64) uint64 {
	s.seq++
	return sec | s.seq
}

// estimating reports whether c still needs counting: once a section alone
// reaches the minimum every later prefix does too, so the estimate stops
// there and the cost of estimation is bounded whatever the body size.
func (s *scan) estimating(c *wire.TokenCounter) bool {
	return s.need > 0 && c.Tokens() < s.need
}

// run walks the body once, validating it.
func (s *scan) run() error {
	var (
		r    wire.Reader
		seen wire.KeySet
	)
	r.Reset(s.body)
	if err := wire.ExpectObject(&r); err != nil {
		return err
	}
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if err := seen.Add(key); err != nil {
			return wire.Fail(&r, err)
		}
		switch string(key) {
		case "tools":
			s.walkTools(&r)
		case "system":
			s.walkSystem(&r)
		case "messages":
			s.walkMessages(&r)
		case "cache_control":
			var b blockInfo
			s.readCC(&r, &b)
			if b.cc == ccSet {
				s.auto, s.autoTTL = true, b.ttl
				s.mark(ordAuto, b.ttl)
			}
		default:
			r.Skip()
		}
	}
	if !r.End() {
		return wire.Invalid("request body is not valid JSON: " + r.Err().Error())
	}
	return nil
}

func (s *scan) walkTools(r *wire.Reader) {
	if r.Peek() != wire.KindArray {
		r.Skip()
		return
	}
	s.tools = candidate{section: "tools", msg: -1, idx: -1}
	var c wire.TokenCounter
	it := r.Array()
	for i := 0; r.NextElem(&it); i++ {
		s.toolsCount++
		if r.Peek() != wire.KindObject {
			r.Skip()
			continue
		}
		b := s.tool(r)
		if s.estimating(&c) {
			var sub wire.Reader
			sub.Reset(s.body[b.start:b.end])
			estimateTool(&sub, &c)
			c.AddTokens(wire.ToolOverheadTokens)
		}
		if b.canCarry(true) {
			s.tools.set(&b, i, -1, c.Tokens()+wire.ToolPromptTokens)
		}
	}
	if s.toolsCount > 0 {
		s.toolsTok = c.Tokens() + wire.ToolPromptTokens
	}
}

func (c *candidate) set(b *blockInfo, idx, msg int, tokens int64) {
	c.found, c.str = true, false
	c.idx, c.msg = idx, msg
	c.ord, c.cc = b.ord, b.cc
	c.start, c.end = b.start, b.end
	c.prefixTokens = tokens
}

func (s *scan) walkSystem(r *wire.Reader) {
	s.system = candidate{section: "system", msg: -1, idx: -1}
	var c wire.TokenCounter
	if s.need > 0 {
		c.AddTokens(wire.MessageOverheadTokens)
	}
	switch r.Peek() {
	case wire.KindString:
		s.sawSystem = true
		s.stringCandidate(r, &s.system, &c, secSystem)
	case wire.KindArray:
		s.sawSystem = true
		s.blocks(r, secSystem, &c, &s.system, -1)
	default:
		r.Skip()
	}
	s.systemTok = c.Tokens()
}

// stringCandidate consumes a string value that would become a text block.
func (s *scan) stringCandidate(r *wire.Reader, cand *candidate, c *wire.TokenCounter, sec uint64) bool {
	start := r.Pos()
	raw, ok := r.RawString()
	if !ok {
		return false
	}
	if s.estimating(c) {
		var sub wire.Reader
		sub.Reset(s.body[start:r.Pos()])
		sub.EstimateString(c)
	}
	ord := s.next(sec)
	if blank(raw) {
		return false
	}
	cand.found, cand.str, cand.idx = true, true, -1
	cand.ord, cand.cc = ord, ccNone
	cand.start, cand.end = start, r.Pos()
	cand.prefixTokens = c.Tokens()
	return true
}

// blocks consumes an array of content blocks, leaving in cand the last one
// that can carry a marker; it reports whether there was one.
func (s *scan) blocks(r *wire.Reader, sec uint64, c *wire.TokenCounter, cand *candidate, msg int) bool {
	found := false
	it := r.Array()
	for i := 0; r.NextElem(&it); i++ {
		if r.Peek() != wire.KindObject {
			r.Skip()
			continue
		}
		b := s.block(r, sec)
		if s.estimating(c) {
			var sub wire.Reader
			sub.Reset(s.body[b.start:b.end])
			_ = estimateBlock(&sub, c, 0) // shape errors are the parser's to report
		}
		if b.canCarry(false) {
			cand.set(&b, i, msg, c.Tokens())
			found = true
		}
	}
	return found
}

// block consumes one content or system block, counting its marker and those
// of the blocks nested in its content (tool_result, search results) or
// source (documents). Its own marker is ordered after the nested ones.
func (s *scan) block(r *wire.Reader, sec uint64) blockInfo {
	var b blockInfo
	b.start = r.Pos()
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		b.members++
		switch string(key) {
		case "type":
			if r.Peek() == wire.KindString {
				b.typ, _ = r.RawString()
			} else {
				r.Skip()
			}
		case "text":
			if r.Peek() == wire.KindString {
				raw, _ := r.RawString()
				b.hasText, b.blankText = true, blank(raw)
			} else {
				r.Skip()
			}
		case "cache_control":
			s.readCC(r, &b)
		case "content":
			s.nested(r, sec)
		case "source":
			if r.Peek() != wire.KindObject {
				r.Skip()
				continue
			}
			sit := r.Object()
			for k, ok := r.NextKey(&sit); ok; k, ok = r.NextKey(&sit) {
				if string(k) == "content" {
					s.nested(r, sec)
				} else {
					r.Skip()
				}
			}
		default:
			r.Skip()
		}
	}
	s.closeBlock(r, &b, sec)
	return b
}

// closeBlock records the end of a block just consumed, and its marker.
func (s *scan) closeBlock(r *wire.Reader, b *blockInfo, sec uint64) {
	b.end = r.Pos()
	b.ord = s.next(sec)
	if b.cc == ccSet {
		s.mark(b.ord, b.ttl)
	}
}

// nested consumes a content value, counting the markers of any blocks in it.
func (s *scan) nested(r *wire.Reader, sec uint64) {
	if r.Peek() != wire.KindArray {
		r.Skip()
		return
	}
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() == wire.KindObject {
			s.block(r, sec)
		} else {
			r.Skip()
		}
	}
}

// tool consumes one tool definition.
func (s *scan) tool(r *wire.Reader) blockInfo {
	var b blockInfo
	b.start = r.Pos()
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		b.members++
		switch string(key) {
		case "cache_control":
			s.readCC(r, &b)
		case "defer_loading":
			if r.Peek() == wire.KindBool {
				b.deferred, _ = r.Bool()
			} else {
				r.Skip()
			}
		default:
			r.Skip()
		}
	}
	s.closeBlock(r, &b, secTools)
	return b
}

// readCC consumes a cache_control value. null is no marker; anything else
// counts as one (a malformed one is the API's to reject, and counting it
// keeps the total under the limit either way). Only ttl "1h" is long.
func (s *scan) readCC(r *wire.Reader, b *blockInfo) {
	switch r.Peek() {
	case wire.KindNull:
		r.Skip()
		if b.cc == ccNone {
			b.cc = ccNull
		}
		return
	case wire.KindObject:
	default:
		r.Skip()
		b.cc, b.ttl = ccSet, ttl5m
		return
	}
	b.cc, b.ttl = ccSet, ttl5m
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if string(key) == "ttl" && r.Peek() == wire.KindString {
			raw, _ := r.RawString()
			if wire.RawEqual(raw, "1h") {
				b.ttl = ttl1h
			}
			continue
		}
		r.Skip()
	}
}

func (s *scan) walkMessages(r *wire.Reader) {
	if r.Peek() != wire.KindArray {
		r.Skip()
		return
	}
	var c wire.TokenCounter
	it := r.Array()
	for i := 0; r.NextElem(&it); i++ {
		s.messages = i + 1
		if r.Peek() != wire.KindObject {
			r.Skip()
			s.finalCanCarry = false
			continue
		}
		if s.estimating(&c) {
			c.AddTokens(wire.MessageOverheadTokens)
		}
		turn := userTurn{index: i, cand: candidate{section: "messages", msg: i, idx: -1}}
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
				switch r.Peek() {
				case wire.KindString:
					canCarry = s.stringCandidate(r, &turn.cand, &c, secMessages)
				case wire.KindArray:
					canCarry = s.blocks(r, secMessages, &c, &turn.cand, i)
				default:
					r.Skip()
				}
			default:
				r.Skip()
			}
		}
		s.finalCanCarry = canCarry
		if wire.RawEqual(role, "user") {
			turn.present = true
			s.prevUser, s.lastUser = s.lastUser, turn
		}
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
