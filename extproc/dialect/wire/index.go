package wire

// Index is where a request's parse found what the gateway may edit, so that a
// dialect's Edit turns an EditRequest into Edits without reading the body
// again, and wire.Apply then makes the one copy. Offsets are into the body the
// parse was given. It is a plain value inside Request: recording it costs the
// parse no allocation. Each dialect fills the parts its API has and leaves the
// others zero.
type Index struct {
	// Model is the span of the top-level "model" value, quotes included.
	Model Span
	// Append is where a new top-level member goes.
	Append Insertion
	// StreamOptions is Chat Completions' stream_options member.
	StreamOptions StreamOptionsIndex
	// Cache is what Messages prompt-cache planning needs.
	Cache CacheIndex
	// OutputLimit locates the request's output bound for a clamp
	// (EditRequest.OutputLimit).
	OutputLimit OutputLimitIndex
}

// OutputLimitIndex locates the output-bound members of a request: their
// values' spans (OpenAI Chat may carry both max_tokens and
// max_completion_tokens, and the provider reads either), and, for an API
// whose bound lives in a nested object (Gemini's generationConfig), that
// object's insertion point.
type OutputLimitIndex struct {
	Values [2]Span
	n      int
	// Nested is where a bound goes inside the nested object; NestedFound
	// reports that the object exists.
	Nested      Insertion
	NestedFound bool
	// NestedNull is the span of a nested object given as null, which a
	// bound replaces with an object.
	NestedNull Span
}

// Add records the span of one output-bound value; past the second it is
// dropped, which only a dialect bug can cause (duplicate keys are refused).
func (o *OutputLimitIndex) Add(s Span) {
	if o.n < len(o.Values) {
		o.Values[o.n] = s
		o.n++
	}
}

// Found reports whether any output-bound value was recorded.
func (o *OutputLimitIndex) Found() bool { return o.n > 0 }

// Insertion is where a member can be spliced into an object: just after the
// last member's value, or just after '{' when the object is empty. Comma
// reports that the object has members, so the new one must be preceded by a
// comma.
type Insertion struct {
	At    int
	Comma bool
}

// StreamOptionsIndex locates stream_options and its include_usage.
type StreamOptionsIndex struct {
	// Value is the span of the stream_options value; zero when absent.
	Value Span
	// Null reports that the value is null.
	Null bool
	// IncludeUsage is the span of the include_usage value inside the object;
	// zero when absent.
	IncludeUsage Span
	// IncludeUsageTwice reports a second include_usage: the provider would
	// honour the last, a byte editor the first, so a rewrite is refused.
	IncludeUsageTwice bool
	// Append is where a member goes inside the object.
	Append Insertion
}

// CacheIndex is a request's prompt-cache state, as its parse reads it in the
// same pass: the client's markers, counted everywhere the API counts them,
// and the blocks a breakpoint may be placed on. The Messages API fills all
// of it (see
// https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching); the
// OpenAI APIs' explicit breakpoints (prompt_cache_breakpoint, from gpt-5.6)
// fill System, Turn, the section estimates, Existing and Mode, a content
// part standing for a block (see
// https://platform.openai.com/docs/guides/prompt-caching).
//
// Markers and candidates are ordered by their position in the prompt, which
// is tools, system, messages whatever the body's key order: an ordinal has
// the section in its high byte and a visit counter below it, and the
// top-level (automatic caching) marker sorts after every block. No ordinal is
// zero, so zero means "none" below.
type CacheIndex struct {
	// Tools, System and Turn are the candidates: the last tool definition,
	// the last system block, and the last block of the previous user turn
	// (the last user message before the final message). Each is the last
	// block of its list that can carry a marker.
	Tools, System, Turn CacheCandidate
	// ToolsTokens and SystemTokens estimate the tools and system sections
	// whole, as the estimate of Request.InputTokens counts them.
	ToolsTokens, SystemTokens int64
	// Existing counts the client's markers, the top-level one included.
	Existing int
	// First5m is the ordinal of the earliest 5-minute marker, Last1h that of
	// the latest 1-hour marker; 0 when there is none.
	First5m, Last1h uint64
	// Auto reports top-level cache_control (automatic caching); AutoLong
	// that its TTL is 1h.
	Auto, AutoLong bool
	// FinalCanCarry reports that the final message has a block that can
	// carry a marker, where automatic caching places its breakpoint.
	FinalCanCarry bool
	// Mode is OpenAI's prompt_cache_options.mode as the client set it; the
	// Messages API has none and leaves it CacheModeDefault.
	Mode CacheMode
}

// CacheMode is how a request asks its explicit breakpoints to be counted.
type CacheMode uint8

// The modes of OpenAI's prompt_cache_options.
const (
	CacheModeDefault  CacheMode = iota // absent, null, or "implicit"
	CacheModeExplicit                  // "explicit": only the client's markers cache
	CacheModeOther                     // anything else: a shape the parse does not know
)

// CacheMarker is the client's cache_control on a block.
type CacheMarker uint8

// The states of a block's cache_control.
const (
	MarkerNone CacheMarker = iota // no cache_control member
	MarkerNull                    // "cache_control": null, the client chose none here
	MarkerSet                     // any other value: a breakpoint
)

// CacheCandidate is one place a breakpoint may go.
type CacheCandidate struct {
	// Present reports that the section has a candidate at all: a non-empty
	// tool list, a system prompt, a previous user turn.
	Present bool
	// Found reports a block in it that can carry a marker; the fields below
	// describe that block.
	Found bool
	// Str reports a string (system prompt or message content) that becomes
	// a one-text-block array to carry the marker.
	Str bool
	// Marker is the block's own cache_control.
	Marker CacheMarker
	// Msg is the message index (-1 outside messages), Block the block or
	// tool index (-1 for a string or when none was found): they name the
	// candidate in EditReport.CacheSkipped.
	Msg, Block int
	// Ord is the block's ordinal.
	Ord uint64
	// Span is the block object, or the string with its quotes.
	Span Span
	// Tokens estimates the section up to and including the block.
	Tokens int64
}
