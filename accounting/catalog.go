package accounting

import "strings"

// The model catalog: one reading of model names for everything that keys on
// a model (prices, prompt-cache minimums, metric labels).
//
// Clients and providers spell one model several ways: a dated snapshot
// ("claude-sonnet-4-5-20250929"), an alias ("claude-3-5-haiku-latest"), a
// routing prefix ("anthropic/claude-…", as LiteLLM-style clients send), and
// cloud-platform forms ("us.anthropic.claude-…-v1:0" on Bedrock,
// "claude-…@20250929" on Vertex). ModelFamily reduces all of them to the
// family ID and says whether a cloud platform's form was involved, because
// those platforms bill differently and must not silently take the direct
// API's price.

// ModelFamily returns the family ID of a model name — routing prefix,
// snapshot date and "-latest" removed — and whether the name is a cloud
// platform's form (a Bedrock region or version, a Vertex "@" snapshot).
// Names that are not recognisably variants come back unchanged.
func ModelFamily(model string) (family string, platform bool) {
	model = strings.TrimPrefix(model, "anthropic/")
	if i := strings.Index(model, "claude-"); i > 0 {
		// Bedrock: "anthropic.claude-…", "us.anthropic.claude-…".
		platform = true
		model = model[i:]
	}
	if i := strings.IndexByte(model, '@'); i >= 0 {
		platform = true
		model = model[:i]
	}
	for {
		i := strings.LastIndexByte(model, '-')
		if i < 0 {
			return model, platform
		}
		switch seg := model[i+1:]; {
		case seg == "latest", len(seg) == 8 && allDigits(seg):
		case len(seg) >= 2 && seg[0] == 'v' && bedrockVersion(seg[1:]):
			platform = true
		default:
			return model, platform
		}
		model = model[:i]
	}
}

// bedrockVersion reports a Bedrock version suffix after its "v": "1:0", "2".
func bedrockVersion(s string) bool {
	v, _, _ := strings.Cut(s, ":")
	return v != "" && allDigits(v)
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return len(s) > 0
}

// UnknownModelMinCacheTokens is MinCacheTokens for a model the catalog does
// not know. 1024 is the tier most models have shared since 2024; a
// breakpoint on a prefix that turns out too short costs nothing (the API just
// does not cache it) but one of the four slots, while a higher guess would
// forgo caching of mid-sized prompts on new models, whose minimums have been
// falling (512 for the "5" generation).
const UnknownModelMinCacheTokens = 1024

// MinCacheTokens returns the model's minimum cacheable prompt prefix, in
// tokens, as Anthropic's prompt-caching documentation lists it
// (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching,
// "Cache limitations") in its later-2026 version; earlier versions of the
// page disagree (e.g. Opus 4.7 at 4096), which is one reason a policy may
// override it. Any spelling ModelFamily reads is accepted, and an unknown
// model gets UnknownModelMinCacheTokens. It is the one table of these
// minimums: the prompt-cache injection of extproc/dialect/anthropic is
// given its value by the gate, never a copy. OpenAI models that take
// explicit breakpoints (ExplicitCacheBreakpoints) get OpenAIMinCacheTokens.
func MinCacheTokens(model string) int64 {
	if ExplicitCacheBreakpoints(model) {
		return OpenAIMinCacheTokens
	}
	family, _ := ModelFamily(model)
	switch family {
	case "claude-fable-5-1", "claude-mythos-5-1", "claude-opus-5-5",
		"claude-opus-5", "claude-fable-5", "claude-mythos-5":
		return 512
	case "claude-opus-4-8", "claude-sonnet-5", "claude-sonnet-4-6", "claude-sonnet-4-5",
		"claude-opus-4-1", "claude-opus-4", "claude-opus-4-0", "claude-4-opus",
		"claude-sonnet-4", "claude-sonnet-4-0", "claude-4-sonnet", "claude-3-7-sonnet":
		return 1024
	case "claude-mythos-preview", "claude-opus-4-7", "claude-3-5-haiku", "claude-3-haiku":
		return 2048
	case "claude-opus-4-6", "claude-opus-4-5", "claude-haiku-4-5":
		return 4096
	}
	return UnknownModelMinCacheTokens
}

// UnknownModelMaxOutputTokens is MaxOutputTokens for a model the catalog
// does not know, and the default of a policy's default_max_output_tokens:
// the largest bound any model of the price table publishes for one request
// (gpt-5-pro's 272,000). Guessing high only makes a full reservation of an
// unbounded request conservative (and clamped to the budget, with the bound
// then written into the request); guessing low would let an unbounded
// request produce more than was reserved.
const UnknownModelMaxOutputTokens = 272_000

// MaxOutputTokens returns the most output tokens the model produces for one
// request that sets no bound of its own — what a full budget reservation
// reserves for it — or UnknownModelMaxOutputTokens when the catalog does
// not know the model.
func MaxOutputTokens(model string) int64 {
	if n, ok := LookupMaxOutputTokens(model); ok {
		return n
	}
	return UnknownModelMaxOutputTokens
}

// LookupMaxOutputTokens returns a model's largest output per request as its
// provider's model page lists it, checked 2026-12-03 for the models listed
// in maxOutput: https://docs.anthropic.com/en/docs/about-claude/models/overview
// ("Max output"), https://platform.openai.com/docs/models (each model's
// "Max output tokens"), https://ai.google.dev/gemini-api/docs/models
// ("Output token limit"). Where a page offers a larger bound behind a beta
// flag the larger figure is used. A model of the price table whose figure
// could not be confirmed on its provider's page is deliberately absent
// (known false): the policy's default_max_output_tokens then applies. Any
// spelling ModelFamily reads is accepted.
//
// Anthropic's Messages API requires max_tokens, so for Claude models these
// figures only matter to a request the API will refuse anyway (unbilled);
// for OpenAI and Gemini, where the bound is optional, they are the
// reservation of every unbounded request under budget_reservation: full.
func LookupMaxOutputTokens(model string) (int64, bool) {
	family, _ := ModelFamily(model)
	if n, ok := maxOutput[family]; ok {
		return n, true
	}
	return 0, false
}

// maxOutput is LookupMaxOutputTokens's table, by family ID as ModelFamily
// gives it. OpenAI snapshots keep their date (gpt-4o-2024-08-06): they are
// are not: the gate looks a priced model up by the price table's canonical
// name, which covers every id the table lists.
var maxOutput = map[string]int64{
	// Anthropic, "Max output" of the models overview.
	"claude-3-haiku":    4096,
	"claude-3-opus":     4096,
	"claude-3-5-haiku":  8192,
	"claude-3-5-sonnet": 8192,
	"claude-3-7-sonnet": 128_000, // 64,000; 128,000 with the output-128k-2025-02-19 beta
	"claude-opus-4-0":   32_000,
	"claude-opus-4":     32_000,
	"claude-4-opus":     32_000,
	"claude-opus-4-1":   32_000,
	"claude-sonnet-4-0": 64_000,
	"claude-sonnet-4":   64_000,
	"claude-4-sonnet":   64_000,
	"claude-haiku-4-5":  64_000,
	"claude-sonnet-4-5": 64_000,
	"claude-opus-4-5":   64_000,
	"claude-sonnet-4-6": 64_000,
	"claude-opus-4-6":   128_000,
	// OpenAI, "Max output tokens" of each model page.
	"gpt-4o":       16_384,
	"gpt-4o-mini":  16_384,
	"gpt-4.1":      32_768,
	"gpt-4.1-mini": 32_768,
	"gpt-4.1-nano": 32_768,
	"o3":           100_000,
	"o4-mini":      100_000,
	"gpt-5":        128_000,
	"gpt-5-mini":   128_000,
	"gpt-5-nano":   128_000,
	"gpt-5-pro":    272_000,
	"gpt-5.1":      128_000,
	// Embeddings generate nothing.
	"text-embedding-3-small": 0,
	"text-embedding-3-large": 0,
	// Google, "Output token limit" of the Gemini API models page.
	"gemini-2.5-pro":        65_536,
	"gemini-2.5-flash":      65_536,
	"gemini-2.5-flash-lite": 65_536,
	"gemini-3-pro-preview":  65_536,
}

// OpenAIMinCacheTokens is the shortest prompt OpenAI caches: "Caching is
// available for prompts containing 1024 tokens or more"
// (https://platform.openai.com/docs/guides/prompt-caching). A breakpoint on
// a shorter prefix would cost a cache write and save nothing.
const OpenAIMinCacheTokens = 1024

// ExplicitCacheBreakpoints reports whether an OpenAI model takes explicit
// prompt-cache breakpoints — a "prompt_cache_breakpoint" marker on a
// content part and the request's "prompt_cache_options" — which OpenAI
// offers from gpt-5.6 on (https://platform.openai.com/docs/guides/prompt-caching;
// the prompt_cache_options field of
// https://platform.openai.com/docs/api-reference/responses/create). Any
// gpt-MAJOR.MINOR at or after 5.6, or gpt-MAJOR from 6, with any suffix
// ("-sol", "-terra", "-luna", a dated snapshot), takes them; so does a
// routing prefix ("openai/") and a fine-tune of one ("ft:gpt-5.6-terra:org::id").
// Older models, the o-series and non-OpenAI names do not: a marker there
// is at best ignored.
func ExplicitCacheBreakpoints(model string) bool {
	model = strings.TrimPrefix(model, "openai/")
	if m, ok := strings.CutPrefix(model, "ft:"); ok {
		model, _, _ = strings.Cut(m, ":")
	}
	rest, ok := strings.CutPrefix(model, "gpt-")
	if !ok {
		return false
	}
	major, rest := leadingNumber(rest)
	if major < 0 {
		return false
	}
	minor := 0
	if r, ok := strings.CutPrefix(rest, "."); ok {
		if minor, rest = leadingNumber(r); minor < 0 {
			return false
		}
	}
	if rest != "" && rest[0] != '-' {
		return false // "gpt-5.6o": not a version this rule knows
	}
	return major > 5 || major == 5 && minor >= 6
}

// leadingNumber reads the decimal digits at the start of s (at most 6, so
// the value stays small); n is -1 when there are none.
func leadingNumber(s string) (n int, rest string) {
	i := 0
	for i < len(s) && i < 6 && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 || i < len(s) && s[i] >= '0' && s[i] <= '9' {
		return -1, s
	}
	for _, c := range s[:i] {
		n = n*10 + int(c-'0')
	}
	return n, s[i:]
}
