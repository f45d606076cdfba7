package mockprovider

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Options configure a Provider. The zero value is usable: every field has a
// documented default.
type Options struct {
	// Listen is the address Start and Run listen on; default 127.0.0.1:0
	// (a free port, see Server.Addr).
	Listen string
	// RPM, InputTPM and OutputTPM size the internal token buckets behind the
	// rate-limit headers (defaults 4000, 200000 and 80000, as in a real
	// recording). Each dialect has its own buckets.
	RPM, InputTPM, OutputTPM int64
	// TPM, when above zero, adds a combined tokens bucket (input and output
	// together: OpenAI's tokens per minute) that every request is charged
	// and enforced against; the tokens headers (x-ratelimit-*-tokens,
	// anthropic-ratelimit-tokens-*) then report it.
	TPM int64
	// Window is the period the buckets refill over; default one minute
	// (every limit the providers report is per minute). A test may shorten
	// it to run the same limits' shape faster: the headers then report the
	// limits per Window, and resets in real time.
	Window time.Duration
	// Enforce makes the buckets reject with 429 + retry-after when empty;
	// otherwise they only drive the headers.
	Enforce bool
	// MinCacheTokens overrides entries of DefaultMinCacheTokens, keyed by a
	// substring of the model id; the longest matching key wins.
	MinCacheTokens map[string]int64
	// DefaultMinCache is the minimum cacheable prefix for models matching no
	// key; default 1024.
	DefaultMinCache int64
	// CacheEntries bounds the prompt-cache table; default 10000.
	CacheEntries int
	// LedgerEntries bounds the ledger (oldest dropped first); default 10000.
	LedgerEntries int
	// ImageTokens is the fixed count of an image or non-text document; default 1600.
	ImageTokens int64
	// MessageOverhead is added per message; default 3.
	MessageOverhead int64
	// Models, when non-empty, is the set of model ids served; others get 404.
	// Empty accepts every model. GET /v1/models lists these (or a default set).
	Models []string
	// OrganizationID is sent as anthropic-organization-id.
	OrganizationID string
	// Seed makes ids, padding and obfuscation reproducible across instances.
	Seed uint64
	// Now is the clock (prompt-cache TTLs, rate-limit buckets); default time.Now.
	Now func() time.Time
	// Logger receives one line per request (never bodies or keys); default
	// discards.
	Logger *slog.Logger
	// ShutdownTimeout bounds Run's graceful shutdown; default 5s.
	ShutdownTimeout time.Duration
	// MaxBodyBytes bounds request bodies (413 beyond); default 32 MiB.
	MaxBodyBytes int64
}

// DefaultMinCacheTokens is the per-model minimum cacheable prefix, keyed by a
// substring of the model id. The figures follow LiteLLM's prompt_cache_min_tokens
// (https://github.com/BerriAI/litellm/blob/main/model_prices_and_context_window.json);
// Anthropic documents the minimums on its prompt-caching page
// (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching), whose table has
// changed between versions. A shorter prefix is not cached, without an error.
var DefaultMinCacheTokens = map[string]int64{
	"haiku-4-5":  4096,
	"opus-4-5":   4096,
	"opus-4-6":   4096,
	"opus-4-7":   2048,
	"3-5-haiku":  2048,
	"haiku-3-5":  2048,
	"3-haiku":    2048,
	"fable-5":    512,
	"mythos-5":   512,
	"opus-5-5":   512,
	"sonnet-4-5": 1024,
}

func (o Options) withDefaults() Options {
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	if o.RPM <= 0 {
		o.RPM = 4000
	}
	if o.InputTPM <= 0 {
		o.InputTPM = 200000
	}
	if o.OutputTPM <= 0 {
		o.OutputTPM = 80000
	}
	if o.Window <= 0 {
		o.Window = time.Minute
	}
	if o.DefaultMinCache <= 0 {
		o.DefaultMinCache = 1024
	}
	if o.CacheEntries <= 0 {
		o.CacheEntries = 10000
	}
	if o.LedgerEntries <= 0 {
		o.LedgerEntries = 10000
	}
	if o.ImageTokens <= 0 {
		o.ImageTokens = 1600
	}
	if o.MessageOverhead <= 0 {
		o.MessageOverhead = 3
	}
	if o.OrganizationID == "" {
		o.OrganizationID = "0d6c1e0a-4b7e-4c1f-9a35-6d6f636b6f72"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 5 * time.Second
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 32 << 20
	}
	return o
}

// Provider is the mock upstream, an http.Handler. Its prompt cache, rate-limit
// buckets and ledger are per instance and safe for concurrent use.
type Provider struct {
	opts      Options
	mux       *http.ServeMux
	cache     *promptCache
	anthLimit *limiter
	oaiLimit  *limiter
	gemLimit  *limiter
	ledger    *ledger
	// background holds finished background responses (Responses API) until
	// a GET /v1/responses/{id} asks for them.
	background *backgroundStore
	sent       transcripts
	batches    batchStore    // Anthropic Message Batches (anthropic_batch.go)
	oaiBatches oaiBatchStore // OpenAI files and batches (openai_batch.go)
	counter    atomic.Uint64
	served     servedCounts // every answer by status (limits.go)
}

// New builds a Provider.
func New(opts Options) *Provider {
	opts = opts.withDefaults()
	p := &Provider{
		opts:      opts,
		cache:     newPromptCache(opts.CacheEntries),
		anthLimit: newLimiter(opts.RPM, opts.InputTPM, opts.OutputTPM, opts.TPM, opts.Window, opts.Now()),
		oaiLimit:  newLimiter(opts.RPM, opts.InputTPM, opts.OutputTPM, opts.TPM, opts.Window, opts.Now()),
		gemLimit:  newLimiter(opts.RPM, opts.InputTPM, opts.OutputTPM, opts.TPM, opts.Window, opts.Now()),
		ledger:    newLedger(opts.LedgerEntries),
		// As many as the ledger holds: a test polls what it created.
		background: newBackgroundStore(opts.LedgerEntries),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/messages", p.handleMessages)
	mux.HandleFunc("/v1/messages/count_tokens", p.handleCountTokens)
	mux.HandleFunc("POST /v1/messages/batches", p.handleBatchCreate)
	mux.HandleFunc("GET /v1/messages/batches/{id}", p.handleBatchGet)
	mux.HandleFunc("GET /v1/messages/batches/{id}/results", p.handleBatchResults)
	mux.HandleFunc("POST /mock/batches/{id}/{action}", p.handleBatchFinish)
	mux.HandleFunc("POST /v1/files", p.handleFileCreate)
	mux.HandleFunc("GET /v1/files/{id}", p.handleFileGet)
	mux.HandleFunc("GET /v1/files/{id}/content", p.handleFileContent)
	mux.HandleFunc("POST /v1/batches", p.handleOpenAIBatchCreate)
	mux.HandleFunc("GET /v1/batches/{id}", p.handleOpenAIBatchGet)
	mux.HandleFunc("POST /mock/openai/batches/{id}/{action}", p.handleOpenAIBatchFinish)
	mux.HandleFunc("/v1/chat/completions", p.handleChat)
	mux.HandleFunc("/v1/responses", p.handleResponses)
	mux.HandleFunc("POST /v1/responses/compact", p.handleCompact)
	mux.HandleFunc("GET /v1/responses/{id}", p.handleRetrieve)
	mux.HandleFunc("/v1/embeddings", p.handleEmbeddings)
	mux.HandleFunc("POST /v1beta/models/{call}", p.handleGemini)
	mux.HandleFunc("POST /v1/models/{call}", p.handleGemini)
	mux.HandleFunc("/v1/models", p.handleModels)
	mux.HandleFunc("GET /mock/ledger", p.handleLedger)
	mux.HandleFunc("POST /mock/reset", p.handleReset)
	mux.HandleFunc("GET /mock/sent", p.handleSent)
	p.mux = mux
	return p
}

// ServeHTTP routes by path; the query string (e.g. ?beta=true) is ignored.
func (p *Provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		p.opts.Logger.Info("mock-provider request", "method", r.Method, "path", r.URL.Path,
			"status", sw.status, "duration", time.Since(start))
	}()
	// Below the handlers, for all of them: recording (x-mock-record) of
	// what goes on the wire, then compression (compress.go).
	var out http.ResponseWriter = sw
	var rec *recordWriter
	if on, err := boolHeader(r.Header, "x-mock-record"); err == nil && on {
		rec = &recordWriter{ResponseWriter: sw, ts: &p.sent}
		out = rec
	}
	cw := newCompressWriter(out, responseCoding(r.Header))
	p.mux.ServeHTTP(cw, r)
	cw.finish()
	p.served.add(sw.status)
	if rec != nil {
		rec.done()
	}
}

// Ledger returns a copy of every usage the mock has reported, oldest first.
func (p *Provider) Ledger() []LedgerEntry { return p.ledger.snapshot() }

// Reset clears the ledger, the prompt cache and the rate-limit buckets.
func (p *Provider) Reset() {
	now := p.opts.Now()
	p.ledger.reset()
	p.sent.reset()
	p.cache.reset()
	p.anthLimit.reset(now)
	p.oaiLimit.reset(now)
	p.gemLimit.reset(now)
	p.background.reset()
	p.batches.reset()
	p.oaiBatches.reset()
}

func (p *Provider) handleLedger(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, struct {
		Entries []LedgerEntry `json:"entries"`
	}{p.Ledger()})
}

func (p *Provider) handleReset(w http.ResponseWriter, _ *http.Request) {
	p.Reset()
	writeJSON(w, http.StatusOK, map[string]bool{"reset": true})
}

// statusWriter remembers the status for the log line. It forwards Unwrap so
// http.ResponseController still reaches Flush and Hijack.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// nextID derives a fresh, reproducible 64-bit value per request.
func (p *Provider) nextID() uint64 {
	return splitmix(p.opts.Seed ^ splitmix(p.counter.Add(1)))
}

// requestSeed is the value a request's ids, words, padding and obfuscation
// derive from: x-mock-seed fixes it, so the same request sent twice gets
// the same answer (a replay to compare with); otherwise nextID.
func (p *Provider) requestSeed(r *http.Request) uint64 {
	if v := strings.TrimSpace(r.Header.Get("x-mock-seed")); v != "" {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			return splitmix(p.opts.Seed ^ splitmix(n) ^ 0x5eed5eed)
		}
	}
	return p.nextID()
}

const base58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

// idString renders n characters from alphabet, driven by a generator seeded
// with v; real ids look like req_011CUdgeEZVNjY7M6qwNV9k6.
func idString(v uint64, alphabet string, n int) string {
	r := rng{s: v}
	return r.text(alphabet, n)
}

// splitmix is the SplitMix64 finaliser: a cheap, well-mixed, deterministic
// step for every pseudo-random choice the mock makes.
func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func fnvHash(parts ...[]byte) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		_, _ = h.Write(p)
	}
	return h.Sum64()
}

// rng is a tiny deterministic generator (SplitMix64 stream).
type rng struct{ s uint64 }

func (r *rng) next() uint64 { r.s = splitmix(r.s); return r.s }

// text draws n characters from alphabet.
func (r *rng) text(alphabet string, n int) string {
	var b strings.Builder
	b.Grow(n)
	for range n {
		b.WriteByte(alphabet[r.intn(len(alphabet))])
	}
	return b.String()
}

// intn returns a value in [0, n); n must be positive.
func (r *rng) intn(n int) int { return int(r.next() % uint64(n)) }

// readBody reads at most limit bytes; a larger body is errBodyTooLarge.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errBodyTooLarge
		}
		return nil, fmt.Errorf("read request body: %w", err)
	}
	return body, nil
}

var errBodyTooLarge = errors.New("request body too large")

// marshal encodes without HTML escaping, as the providers do, and without
// the trailing newline json.Encoder adds.
func marshal(v any) []byte {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only the mock's own types are encoded; they always marshal.
		return []byte("{}")
	}
	return []byte(strings.TrimSuffix(b.String(), "\n"))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body := marshal(v)
	w.Header().Set("content-type", "application/json")
	w.Header().Set("content-length", fmt.Sprint(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// modelList is what GET /v1/models serves when Options.Models is empty.
var modelList = []string{"claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001", "claude-opus-4-5-20251101",
	"gpt-4o-mini", "gpt-5-nano"}

func (p *Provider) knownModel(model string) bool {
	if len(p.opts.Models) == 0 {
		return true
	}
	for _, m := range p.opts.Models {
		if m == model {
			return true
		}
	}
	return false
}

// handleModels answers in the Anthropic shape when the caller looks like an
// Anthropic client (anthropic-version or x-api-key present), else OpenAI's.
func (p *Provider) handleModels(w http.ResponseWriter, r *http.Request) {
	models := p.opts.Models
	if len(models) == 0 {
		models = modelList
	}
	created := p.opts.Now().UTC()
	if r.Header.Get("anthropic-version") != "" || r.Header.Get("x-api-key") != "" {
		p.anthropicModels(w, r, models, created)
		return
	}
	p.openaiModels(w, r, models, created)
}
