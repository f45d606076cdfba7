package anthropic

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/tidwall/gjson"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Reference oracles: the multi-pass implementations the single-pass parse
// and edits replaced, kept as they were (renamed ref…, except planCache and
// edit, which FuzzInjectCacheControl has always used) so the fuzz targets
// can hold the new code to them byte for byte: ParseRequest before it
// recorded the Index, the separate prompt-cache scan with its own estimates,
// and the model rewrite that searched and copied the body. None of it is used
// outside tests.

func refParseRequest(body []byte) (wire.Request, error) {
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
			req.Messages, err = refEstimateMessages(&r, &c, refMessageMember)
		case "system":
			system[0] = r.Pos()
			err = refEstimateSystem(&r, &c)
			system[1] = r.Pos()
		case "tools":
			var n int
			tools[0] = r.Pos()
			n, err = refEstimateTools(&r, &c, refEstimateTool)
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

// refMessageMember estimates one member of a message: only content is read by
// the model (role is framing, counted in the per-message overhead).
func refMessageMember(r *wire.Reader, c *wire.TokenCounter, key []byte) error {
	if string(key) != "content" {
		r.Skip()
		return nil
	}
	switch r.Peek() {
	case wire.KindString:
		r.EstimateString(c)
	case wire.KindArray:
		if err := refEstimateBlocks(r, c, 0); err != nil {
			return wire.Within("content", err)
		}
	default:
		return wire.Invalid("content: must be a string or an array of content blocks")
	}
	return nil
}

func refEstimateSystem(r *wire.Reader, c *wire.TokenCounter) error {
	c.AddTokens(wire.MessageOverheadTokens)
	switch r.Peek() {
	case wire.KindString:
		r.EstimateString(c)
	case wire.KindArray:
		if err := refEstimateBlocks(r, c, 0); err != nil {
			return wire.Within("system", err)
		}
	case wire.KindNull:
		r.Skip()
	default:
		return wire.Invalid("system: must be a string or an array of text blocks")
	}
	return nil
}

// refEstimateBlocks consumes an array of content blocks.
func refEstimateBlocks(r *wire.Reader, c *wire.TokenCounter, depth int) error {
	it := r.Array()
	for i := 0; r.NextElem(&it); i++ {
		if r.Peek() != wire.KindObject {
			return wire.Invalid(fmt.Sprintf("%d: content block must be an object", i))
		}
		if err := refEstimateBlock(r, c, depth); err != nil {
			return err
		}
	}
	return nil
}

// refEstimateBlock consumes one content block. Text-bearing fields are counted
// as they stream past; the source is only located, because whether its data
// is text or an opaque base64 blob depends on fields that may come after it.
func refEstimateBlock(r *wire.Reader, c *wire.TokenCounter, depth int) error {
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
			refEstimateText(r, c)
		case "content":
			if err := refEstimateContent(r, c, depth); err != nil {
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
		return refEstimateSource(r.Slice(src[0], src[1]), c, depth)
	}
	return nil
}

// refEstimateContent consumes nested content: a string, or blocks.
func refEstimateContent(r *wire.Reader, c *wire.TokenCounter, depth int) error {
	switch {
	case r.Peek() == wire.KindString:
		r.EstimateString(c)
	case r.Peek() == wire.KindArray && depth < maxBlockDepth:
		return refEstimateBlocks(r, c, depth+1)
	default:
		r.EstimateValue(c)
	}
	return nil
}

func refEstimateText(r *wire.Reader, c *wire.TokenCounter) {
	if r.Peek() == wire.KindString {
		r.EstimateString(c)
		return
	}
	r.EstimateValue(c)
}

// refEstimateSource estimates a document (or other non-image) source:
// {"type":"base64"|"text"|"content"|"url"|"file", ...}. Its span was
// validated when it was skipped.
func refEstimateSource(src []byte, c *wire.TokenCounter, depth int) error {
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
			if err := refEstimateContent(&r, c, depth); err != nil {
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
		refEstimateText(&d, c)
	case string(typ) == "base64" && data[0] >= 0:
		c.AddTokens(wire.Base64DocumentTokens(data[1] - data[0]))
	default:
		c.AddTokens(wire.DocumentTokens)
	}
	return nil
}

// refEstimateTool counts one tool definition: client tools by name,
// description and input schema; server tools (web search, code execution…)
// by their whole definition.
func refEstimateTool(r *wire.Reader, c *wire.TokenCounter) {
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		switch string(key) {
		case "cache_control", "defer_loading", "eager_input_streaming", "strict":
			r.Skip()
		case "name", "description":
			refEstimateText(r, c)
		default:
			r.EstimateValue(c)
		}
	}
}

// refEstimateMessages is the old wire.EstimateMessages.
func refEstimateMessages(r *wire.Reader, c *wire.TokenCounter, member func(r *wire.Reader, c *wire.TokenCounter, key []byte) error) (int, error) {
	if r.Peek() != wire.KindArray {
		return 0, wire.Invalid("messages: must be an array")
	}
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() != wire.KindObject {
			return n, wire.Invalid(fmt.Sprintf("messages.%d: must be an object", n))
		}
		c.AddTokens(wire.MessageOverheadTokens)
		mit := r.Object()
		for key, ok := r.NextKey(&mit); ok; key, ok = r.NextKey(&mit) {
			if err := member(r, c, key); err != nil {
				return n, wire.Within(fmt.Sprintf("messages.%d", n), err)
			}
		}
		n++
	}
	return n, nil
}

// refEstimateTools is the old wire.EstimateTools, each definition counted by
// each.
func refEstimateTools(r *wire.Reader, c *wire.TokenCounter, each func(*wire.Reader, *wire.TokenCounter)) (int, error) {
	if r.Null() {
		return 0, nil
	}
	if r.Peek() != wire.KindArray {
		return 0, wire.Invalid("tools: must be an array")
	}
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() != wire.KindObject {
			return n, wire.Invalid(fmt.Sprintf("tools.%d: must be an object", n))
		}
		each(r, c)
		c.AddTokens(wire.ToolOverheadTokens)
		n++
	}
	if n > 0 {
		c.AddTokens(wire.ToolPromptTokens)
	}
	return n, nil
}

type ttl uint8

const (
	ttl5m ttl = iota
	ttl1h
)

// ordNone is "no marker" for first5m; the sections' ordinals are the
// production ones (secTools, secSystem…).
const ordNone uint64 = 1<<64 - 1

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

// refInjectCacheControl is the old InjectCacheControl, which adds Anthropic prompt-cache breakpoints to a Messages
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
func refInjectCacheControl(body []byte, opts CacheOptions) (out []byte, res CacheResult, err error) {
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
			refEstimateTool(&sub, &c)
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
			_ = refEstimateBlock(&sub, c, 0) // shape errors are the parser's to report
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

// refMember is where a key sits in a JSON object.
type refMember struct {
	Found      bool
	Start, End int
	InsertAt   int
	Members    int
}

// refFindMember validates obj and locates the value of key among its
// top-level members, rejecting a key present twice.
func refFindMember(obj []byte, key string) (refMember, error) {
	var r wire.Reader
	r.Reset(obj)
	var m refMember
	if r.Peek() != wire.KindObject {
		if r.Peek() == wire.KindInvalid {
			return m, wire.Invalid("request body is not valid JSON")
		}
		return m, wire.Invalid("request body must be a JSON object")
	}
	it := r.Object()
	m.InsertAt = r.Pos()
	for k, ok := r.NextKey(&it); ok; k, ok = r.NextKey(&it) {
		m.Members++
		start, end := r.Skip()
		if string(k) == key {
			if m.Found {
				return m, wire.Invalid(fmt.Sprintf("%s: duplicate key", key))
			}
			m.Found, m.Start, m.End = true, start, end
		}
		m.InsertAt = end
	}
	if !r.End() {
		return m, wire.Invalid("request body is not valid JSON: " + r.Err().Error())
	}
	return m, nil
}

// refSetModel is the old SetModel: find the member, splice a copy.
func refSetModel(body []byte, model string) ([]byte, error) {
	m, err := refFindMember(body, "model")
	if err != nil {
		return nil, err
	}
	if !m.Found {
		return nil, wire.Invalid("model: field required")
	}
	enc := gjson.AppendJSONString(make([]byte, 0, len(model)+2), model)
	out := make([]byte, 0, len(body)-(m.End-m.Start)+len(enc))
	out = append(append(append(out, body[:m.Start]...), enc...), body[m.End:]...)
	return out, nil
}

// refEdit is the old Messages.Edit, returning the body it built: SetModel,
// then InjectCacheControl on the result.
func refEdit(body []byte, req *wire.Request, e wire.EditRequest) ([]byte, wire.EditReport, error) {
	var rep wire.EditReport
	cur := body
	if e.Model != "" && e.Model != req.Model {
		b, err := refSetModel(cur, e.Model)
		if err != nil {
			return nil, rep, err
		}
		cur = b
	}
	if e.Cache != nil {
		b, res, err := refInjectCacheControl(cur, CacheOptions{TTL: e.Cache.TTL, MinTokens: e.Cache.MinTokens})
		if err != nil {
			return nil, rep, err
		}
		rep.CacheExisting, rep.CacheAdded, rep.CacheSkipped = res.Existing, res.Added, res.Skipped
		cur = b
	}
	return cur, rep, nil
}
