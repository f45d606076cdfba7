package gemini

import (
	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// The members of usageMetadata
// (https://ai.google.dev/api/generate-content#UsageMetadata), in the order
// fromUsageMetadata reads them.
var usageKeys = [...]string{
	"promptTokenCount", "cachedContentTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "toolUsePromptTokenCount",
	"trafficType",
}

// fromUsageMetadata converts usageMetadata. promptTokenCount includes the
// cached content, which is moved into CacheReadTokens; the prompt tokens of
// tool results fed back (toolUsePromptTokenCount) are input too; thoughts
// are billed as output, next to the candidates
// (https://ai.google.dev/gemini-api/docs/thinking#pricing). Every field is
// optional (zero counts are omitted); negative or inconsistent counts are
// clamped so a usage never refunds. The service tier comes from
// trafficType (serviceTier), or is tier, the last one a stream named, when
// this usageMetadata names none.
func fromUsageMetadata(u wire.Value, tier string) accounting.Usage {
	var f [len(usageKeys)]wire.Value
	u.Lookup(usageKeys[:], f[:])
	prompt := max(f[0].Int(), 0)
	cached := min(max(f[1].Int(), 0), prompt)
	return accounting.Usage{
		InputTokens:     sat(prompt-cached, max(f[4].Int(), 0)),
		CacheReadTokens: cached,
		OutputTokens:    sat(max(f[2].Int(), 0), max(f[3].Int(), 0)),
		ServiceTier:     serviceTier(f[5], tier),
	}
}

// serviceTier reads usageMetadata.trafficType, which Vertex AI reports and
// the Gemini API omits
// (https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/v1/GenerateContentResponse#TrafficType).
// The two pay-as-you-go tiers that bill at a multiple of the standard price
// take the price table's names, since ParseServiceTier reads those:
// ON_DEMAND_PRIORITY is "priority" and ON_DEMAND_FLEX is "flex" (Priority
// and Flex in https://ai.google.dev/gemini-api/docs/pricing). Any other
// value is kept verbatim and prices as standard: ON_DEMAND is standard, and
// PROVISIONED_THROUGHPUT is capacity bought up front — not a per-token
// charge, which standard over-states rather than under-states. cur is kept
// when v names no tier; the mapped names are compared undecoded, so a
// traffic type repeated on every chunk costs no allocation.
func serviceTier(v wire.Value, cur string) string {
	var t string
	switch string(v.Raw) { // compared, not kept: no allocation
	case `"ON_DEMAND_PRIORITY"`:
		t = "ON_DEMAND_PRIORITY"
	case `"ON_DEMAND_FLEX"`:
		t = "ON_DEMAND_FLEX"
	default:
		t = wire.ServiceTier(v, cur) // decoded, so an escaped spelling maps too
	}
	switch t {
	case "ON_DEMAND_PRIORITY":
		return "priority"
	case "ON_DEMAND_FLEX":
		return "flex"
	}
	return t
}

// sat adds two non-negative counts, saturating.
func sat(a, b int64) int64 {
	if a > 1<<62 || b > 1<<62 {
		return 1 << 62
	}
	return a + b
}

// The members of a response (GenerateContentResponse) read.
var responseKeys = [...]string{"usageMetadata", "modelVersion"}

// UsageFromJSON extracts the usage of a complete JSON answer: one
// GenerateContentResponse (generateContent), or the JSON array of them that
// streamGenerateContent returns without alt=sse, whose usageMetadata is
// cumulative, so the last one counts. ok is false when the body is not
// valid JSON (truncated) or holds no usageMetadata (an error body).
func UsageFromJSON(body []byte) (usage accounting.Usage, model string, ok bool) {
	var r wire.Reader
	r.Reset(body)
	if r.Peek() != wire.KindArray {
		var v [len(responseKeys)]wire.Value
		if !wire.Lookup(body, responseKeys[:], v[:]) || !v[0].IsObject() {
			return usage, "", false
		}
		return fromUsageMetadata(v[0], ""), v[1].Text(), true
	}
	var last, lastModel wire.Value
	it := r.Array()
	for r.NextElem(&it) {
		k := r.Peek()
		start, end := r.Skip()
		if k != wire.KindObject || r.Err() != nil {
			continue
		}
		var v [len(responseKeys)]wire.Value
		wire.Lookup(body[start:end], responseKeys[:], v[:])
		if v[0].IsObject() {
			last = v[0]
		}
		if v[1].Exists() {
			lastModel = v[1]
		}
	}
	if !r.End() || !last.IsObject() {
		return usage, "", false
	}
	return fromUsageMetadata(last, ""), lastModel.Text(), true
}
