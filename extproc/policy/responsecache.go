package policy

import (
	"fmt"
	"time"
)

// ResponseCache is a policy's exact response cache (response_cache: in
// tokenwarden.yaml): a repeated request, byte for byte as tokenwarden
// forwards it, is answered from the cache of its org instead of the
// provider. It is off unless Enabled.
//
//	response_cache:
//	  enabled: true
//	  ttl: 10m                  # how long an answer may be replayed
//	  max_entry_bytes: 1048576  # larger responses are not stored
//	  max_org_bytes: 67108864   # per org; least recently used out first
//	  shared: false             # true: one cache for every org under this policy
//	  count_requests: false     # true: a hit counts against requests_per_minute
//	  cacheable:                # which requests; default: temperature 0
//	    - {max_temperature: 0}
type ResponseCache struct {
	Enabled bool
	TTL     time.Duration
	// MaxEntryBytes bounds the response body kept (as the client got it,
	// before compression); MaxOrgBytes the org's total as the store counts
	// it (limiter.StoredSize).
	MaxEntryBytes int64
	MaxOrgBytes   int64
	// Shared puts every org of the policy in one partition: an answer one
	// org paid for is replayed to another. Only for policies whose orgs
	// may see each other's prompts' answers.
	Shared bool
	// CountRequests makes a hit count against requests_per_minute (never
	// against tokens or budgets: the provider was not called).
	CountRequests bool
	// Cacheable lists the request shapes that may be served from and
	// stored in the cache; a request matching any is cacheable.
	Cacheable []CacheShape
}

// CacheShape is one kind of request the cache may reuse an answer for.
type CacheShape struct {
	// MaxTemperature: the request sets temperature explicitly, at most
	// this (0: greedy decoding, the default shape).
	MaxTemperature float64
	// AnyTemperature: temperature is not looked at, set or not; the cache
	// then replays one sample of what the model could have said.
	AnyTemperature bool
	// Seed: the request must also carry a seed (OpenAI's best-effort
	// reproducibility: https://platform.openai.com/docs/api-reference/chat/create#chat-create-seed).
	Seed bool
}

// Defaults and bounds of response_cache.
const (
	DefaultResponseCacheTTL   = 10 * time.Minute
	DefaultCacheMaxEntryBytes = 1 << 20
	DefaultCacheMaxOrgBytes   = 64 << 20
	maxCacheTTL               = 7 * 24 * time.Hour
	// maxCacheEntryBytes matches limiter.MaxCacheValue.
	maxCacheEntryBytes = 64 << 20
)

func compileResponseCache(at string, f responseCacheFile) (ResponseCache, error) {
	out := ResponseCache{
		Enabled: f.Enabled, TTL: DefaultResponseCacheTTL, Shared: f.Shared, CountRequests: f.CountRequests,
		MaxEntryBytes: DefaultCacheMaxEntryBytes, MaxOrgBytes: DefaultCacheMaxOrgBytes,
	}
	if f.TTL.set {
		out.TTL = f.TTL.Duration
	}
	if out.TTL < time.Second || out.TTL > maxCacheTTL {
		return out, fmt.Errorf("%s.ttl: %s must be between 1s and %s", at, out.TTL, maxCacheTTL)
	}
	if f.MaxEntryBytes != nil {
		out.MaxEntryBytes = *f.MaxEntryBytes
	}
	if out.MaxEntryBytes < 1 || out.MaxEntryBytes > maxCacheEntryBytes {
		return out, fmt.Errorf("%s.max_entry_bytes: %d must be between 1 and %d", at, out.MaxEntryBytes, maxCacheEntryBytes)
	}
	if f.MaxOrgBytes != nil {
		out.MaxOrgBytes = *f.MaxOrgBytes
	} else if out.MaxOrgBytes < out.MaxEntryBytes {
		out.MaxOrgBytes = out.MaxEntryBytes
	}
	if out.MaxOrgBytes < out.MaxEntryBytes {
		return out, fmt.Errorf("%s.max_org_bytes: %d is below max_entry_bytes (%d)", at, out.MaxOrgBytes, out.MaxEntryBytes)
	}
	for i, s := range f.Cacheable {
		sat := fmt.Sprintf("%s.cacheable[%d]", at, i)
		switch {
		case s.AnyTemperature && s.MaxTemperature != nil:
			return out, fmt.Errorf("%s: max_temperature and any_temperature exclude each other", sat)
		case !s.AnyTemperature && s.MaxTemperature == nil:
			return out, fmt.Errorf("%s: name max_temperature (0 for greedy decoding) or any_temperature: true", sat)
		case s.MaxTemperature != nil && (*s.MaxTemperature < 0 || *s.MaxTemperature > 2):
			return out, fmt.Errorf("%s.max_temperature: %v must be between 0 and 2", sat, *s.MaxTemperature)
		}
		shape := CacheShape{AnyTemperature: s.AnyTemperature, Seed: s.Seed}
		if s.MaxTemperature != nil {
			shape.MaxTemperature = *s.MaxTemperature
		}
		out.Cacheable = append(out.Cacheable, shape)
	}
	if len(out.Cacheable) == 0 {
		out.Cacheable = []CacheShape{{MaxTemperature: 0}}
	}
	return out, nil
}
