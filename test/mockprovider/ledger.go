package mockprovider

import (
	"encoding/json"
	"sync"

	"github.com/tokenwarden/tokenwarden/accounting"
)

// Dialect names in the ledger.
const (
	DialectAnthropic = "anthropic"
	// DialectAnthropicBatch: one entry per succeeded batch line, RequestID
	// "<batch id>/<custom_id>", added once when the batch ends.
	DialectAnthropicBatch = "anthropic_batch"
	DialectOpenAI         = "openai"
	DialectResponses      = "openai_responses"
	DialectEmbeddings     = "openai_embeddings"
	DialectGemini         = "gemini"
)

// LedgerEntry is one response that carried (or was meant to carry) usage.
type LedgerEntry struct {
	RequestID string `json:"request_id"`
	Model     string `json:"model"`
	Dialect   string `json:"dialect"`
	Stream    bool   `json:"stream"`
	// Usage holds the usage objects exactly as sent, in order: for an
	// Anthropic stream message_start's message.usage then message_delta's
	// usage; for JSON bodies and OpenAI streams the one usage object. Empty
	// when none was sent.
	Usage []json.RawMessage `json:"usage"`
	// Reported is what a client merging the sent usage by the SDKs' rules
	// ends up with (message_delta fields overwrite message_start's; OpenAI
	// cached tokens moved out of prompt tokens). Only message_start carries
	// the 5m/1h split, so cache writes a client learns of from message_delta
	// alone (x-mock-usage-on-delta-only) are counted as 5m.
	Reported Tokens `json:"reported"`
	// Computed is what the mock computed for the request, whether or not it
	// was sent.
	Computed Tokens `json:"computed"`
	// Cut is true when the response ended (error event, disconnect, client
	// gone) before its final usage was sent.
	Cut bool `json:"cut"`
	// NoUsage is true when x-mock-no-usage suppressed usage deliberately.
	NoUsage bool `json:"no_usage"`
	// Complete is true when the whole response (up to message_stop,
	// data: [DONE], the terminal Responses event or the last Gemini chunk)
	// was delivered.
	Complete bool `json:"complete"`
	// Deferred is true for a background response (Responses API): the
	// answer carried no usage; a later GET /v1/responses/{id} reports it,
	// in an entry of its own with the same ResponseID.
	Deferred bool `json:"deferred,omitempty"`
	// ResponseID is the Responses API's response id, when there is one.
	ResponseID string `json:"response_id,omitempty"`
	// ServiceTier is the service tier the response reported having served
	// the request on (OpenAI's service_tier, Anthropic's usage.service_tier,
	// Gemini's usageMetadata.trafficType), "" when it reported none.
	ServiceTier string `json:"service_tier,omitempty"`
	// Breakpoints counts the explicit prompt-cache breakpoints
	// (prompt_cache_breakpoint markers) of an OpenAI request on a model that
	// has them (gpt-5.6 and later), as the request carried them.
	Breakpoints int `json:"breakpoints,omitempty"`
}

// Tokens is a usage record in the billing classes tokenwarden uses.
type Tokens struct {
	InputTokens        int64 `json:"input_tokens"`
	OutputTokens       int64 `json:"output_tokens"`
	CacheReadTokens    int64 `json:"cache_read_input_tokens"`
	CacheWrite5mTokens int64 `json:"cache_write_5m_input_tokens"`
	CacheWrite1hTokens int64 `json:"cache_write_1h_input_tokens"`
}

// Accounting converts to accounting.Usage for cost comparisons.
func (t Tokens) Accounting() accounting.Usage {
	return accounting.Usage{
		InputTokens: t.InputTokens, OutputTokens: t.OutputTokens, CacheReadTokens: t.CacheReadTokens,
		CacheWrite5mTokens: t.CacheWrite5mTokens, CacheWrite1hTokens: t.CacheWrite1hTokens,
	}
}

type ledger struct {
	mu      sync.Mutex
	max     int
	entries []LedgerEntry
}

func newLedger(max int) *ledger { return &ledger{max: max} }

func (l *ledger) add(e LedgerEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.entries) >= l.max {
		l.entries = append(l.entries[:0], l.entries[len(l.entries)-l.max+1:]...)
	}
	l.entries = append(l.entries, e)
}

func (l *ledger) snapshot() []LedgerEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]LedgerEntry, len(l.entries))
	copy(out, l.entries)
	return out
}

func (l *ledger) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = nil
}
