package mockprovider

import (
	"crypto/sha256"
	"encoding/json"
	"time"
)

// OpenAI's automatic prompt caching, as its guide describes it
// (https://platform.openai.com/docs/guides/prompt-caching): prompts of 1024
// tokens or more are cached without any request field; a later request
// whose prompt starts with a cached prefix reports the hit in
// usage.prompt_tokens_details.cached_tokens, in increments of 128 tokens
// (1024, 1152, 1280, …); cached prefixes stay warm for minutes of inactivity.
//
// The mock caches at message boundaries: a prefix is the model, the tools
// and the first k messages exactly as sent, and its token count is what the
// package's token rule gives them. A hit reports the longest warm prefix,
// rounded down to a multiple of 128, when it is at least 1024 tokens. That
// is coarser than OpenAI (which matches within a message) but predictable,
// and never reports more than the prompt.
const (
	oaiMinCacheTokens = 1024
	oaiCacheIncrement = 128
	oaiCacheTTL       = 5 * time.Minute
)

// oaiPrefix is one cacheable prefix of a Chat Completions prompt: its key
// and the tokens up to and including its last message.
type oaiPrefix struct {
	key    [32]byte
	tokens int64
}

// oaiPrefixes hashes the prompt's message-boundary prefixes. toolsTokens
// counts first, as the tools lead the prompt OpenAI caches.
func oaiPrefixes(model string, tools []json.RawMessage, messages []json.RawMessage, messageTokens []int64, toolsTokens int64) []oaiPrefix {
	h := sha256.New()
	h.Write([]byte("openai\x00" + model + "\x00"))
	for _, t := range tools {
		h.Write(t)
		h.Write([]byte{0})
	}
	run := toolsTokens
	out := make([]oaiPrefix, 0, len(messages))
	for i, m := range messages {
		h.Write(m)
		h.Write([]byte{0})
		run += messageTokens[i]
		var p oaiPrefix
		h.Sum(p.key[:0])
		p.tokens = run
		out = append(out, p)
	}
	return out
}

// planOpenAI returns the cached-token count of a prompt with these prefixes
// at now, and the plan that refreshes the hit and warms every cacheable
// prefix, applied with commit once the request is admitted.
func (c *promptCache) planOpenAI(prefixes []oaiPrefix, now time.Time) (cached int64, plan cachePlan) {
	c.mu.Lock()
	hit := -1
	for i := len(prefixes) - 1; i >= 0; i-- {
		if e, ok := c.entries[prefixes[i].key]; ok && now.Before(e.expires) {
			hit = i
			break
		}
	}
	c.mu.Unlock()
	if hit >= 0 {
		k := prefixes[hit].key
		plan.hit = &k
		if n := prefixes[hit].tokens; n >= oaiMinCacheTokens {
			cached = n / oaiCacheIncrement * oaiCacheIncrement
		}
	}
	for _, p := range prefixes[hit+1:] {
		if p.tokens >= oaiMinCacheTokens {
			plan.writes = append(plan.writes, cacheWrite{key: p.key, ttl: oaiCacheTTL})
		}
	}
	return cached, plan
}
