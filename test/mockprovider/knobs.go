package mockprovider

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// knobs are the test-facing x-mock-* request headers, parsed once.
type knobs struct {
	status          int   // 0: no scripted failure
	retryAfter      int64 // -1: not given
	outputTokens    int64 // -1: derive from the request
	errorAfter      int   // -1: never
	disconnectAfter int   // -1: never
	chunkDelay      time.Duration
	splitRandom     bool
	splitSize       int // 0: one write per event
	noUsage         bool
	usageOnDelta    bool
	// The Responses API and Gemini: tokens read from and written to the
	// prompt cache (within the prompt), reasoning or thinking tokens (on top
	// of the visible output), and a forced incomplete status (Responses:
	// max_output_tokens or content_filter).
	cachedTokens     int64
	cacheWriteTokens int64
	reasoningTokens  int64
	incomplete       string
	// serviceTier, when set, is the service tier every dialect's response
	// reports having served the request on: OpenAI's service_tier (Chat:
	// the body and every chunk; Responses: the response object), Anthropic's
	// usage.service_tier, Gemini's usageMetadata.trafficType. "": each
	// dialect's usual value (default, standard, none).
	serviceTier string
}

// maxServiceTier bounds x-mock-service-tier; real tiers are short words.
const maxServiceTier = 64

// maxChunkDelay keeps a typo such as "20s" per event from hanging a test run.
const maxChunkDelay = 10 * time.Second

// parseKnobs reads the x-mock-* headers; a malformed value is an error so a
// test never silently runs without the knob it asked for.
func parseKnobs(h http.Header) (knobs, error) {
	k := knobs{retryAfter: -1, outputTokens: -1, errorAfter: -1, disconnectAfter: -1}
	var err error
	intHeader := func(name string, min int64, dst *int64) {
		v := strings.TrimSpace(h.Get(name))
		if v == "" || err != nil {
			return
		}
		n, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil || n < min {
			err = fmt.Errorf("%s: want an integer >= %d, got %q", name, min, v)
			return
		}
		*dst = n
	}
	var status, errAfter, discAfter int64 = 0, -1, -1
	intHeader("x-mock-status", 100, &status)
	if err == nil && status > 599 {
		err = fmt.Errorf("x-mock-status: %d is not an HTTP status", status)
	}
	intHeader("x-mock-retry-after", 0, &k.retryAfter)
	intHeader("x-mock-output-tokens", 0, &k.outputTokens)
	intHeader("x-mock-error-after", 0, &errAfter)
	intHeader("x-mock-disconnect-after", 0, &discAfter)
	intHeader("x-mock-cached-tokens", 0, &k.cachedTokens)
	intHeader("x-mock-cache-write-tokens", 0, &k.cacheWriteTokens)
	intHeader("x-mock-reasoning-tokens", 0, &k.reasoningTokens)
	if err != nil {
		return knobs{}, err
	}
	k.status, k.errorAfter, k.disconnectAfter = int(status), int(errAfter), int(discAfter)
	if v := strings.TrimSpace(h.Get("x-mock-chunk-delay")); v != "" {
		d, perr := time.ParseDuration(v)
		if perr != nil || d < 0 || d > maxChunkDelay {
			return knobs{}, fmt.Errorf("x-mock-chunk-delay: want a duration in [0, %s], got %q", maxChunkDelay, v)
		}
		k.chunkDelay = d
	}
	if v := strings.TrimSpace(h.Get("x-mock-split")); v != "" {
		if strings.EqualFold(v, "random") {
			k.splitRandom = true
		} else if n, perr := strconv.Atoi(v); perr == nil && n > 0 {
			k.splitSize = n
		} else {
			return knobs{}, fmt.Errorf("x-mock-split: want \"random\" or a positive byte count, got %q", v)
		}
	}
	switch v := strings.TrimSpace(h.Get("x-mock-incomplete")); v {
	case "", "max_output_tokens", "content_filter":
		k.incomplete = v
	default:
		return knobs{}, fmt.Errorf("x-mock-incomplete: want max_output_tokens or content_filter, got %q", v)
	}
	if v := strings.TrimSpace(h.Get("x-mock-service-tier")); v != "" {
		if len(v) > maxServiceTier || strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == '"' || r == '\\' || r > '~' }) {
			return knobs{}, fmt.Errorf("x-mock-service-tier: want a word of at most %d printable ASCII characters, got %q", maxServiceTier, v)
		}
		k.serviceTier = v
	}
	if k.noUsage, err = boolHeader(h, "x-mock-no-usage"); err != nil {
		return knobs{}, err
	}
	if k.usageOnDelta, err = boolHeader(h, "x-mock-usage-on-delta-only"); err != nil {
		return knobs{}, err
	}
	// The wire knobs act in Provider.ServeHTTP, below every handler; they
	// are checked here so that a typo is a 400, not a silent default.
	if v := strings.ToLower(strings.TrimSpace(h.Get("x-mock-compress"))); v != "" && v != "identity" {
		if _, ok := codings[v]; !ok {
			return knobs{}, fmt.Errorf("x-mock-compress: want gzip, br, zstd, deflate, deflate-raw or identity, got %q", v)
		}
	}
	for _, name := range []string{"x-mock-honour-accept-encoding", "x-mock-record"} {
		if _, err := boolHeader(h, name); err != nil {
			return knobs{}, err
		}
	}
	if v := strings.TrimSpace(h.Get("x-mock-seed")); v != "" {
		if _, err := strconv.ParseUint(v, 10, 64); err != nil {
			return knobs{}, fmt.Errorf("x-mock-seed: want an unsigned integer, got %q", v)
		}
	}
	return k, nil
}

// boolHeader treats a present header with an empty value as true, since
// "x-mock-usage-on-delta-only" reads naturally as a bare flag.
func boolHeader(h http.Header, name string) (bool, error) {
	vals, ok := h[http.CanonicalHeaderKey(name)]
	if !ok || len(vals) == 0 {
		return false, nil
	}
	v := strings.TrimSpace(vals[0])
	if v == "" {
		return true, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s: want true or false, got %q", name, v)
	}
	return b, nil
}

// tier is the service tier a response reports: the x-mock-service-tier
// knob, else the dialect's usual value def.
func (k *knobs) tier(def string) string {
	if k.serviceTier != "" {
		return k.serviceTier
	}
	return def
}
