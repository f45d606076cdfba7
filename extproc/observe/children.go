package observe

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// children caches a vector's children by their label values. Every
// exchange touches a dozen series (requests, tokens, cost, spend,
// admissions, store calls, provider status); resolving each by
// WithLabelValues (hashing the values, the vector's lock, its map) on
// every request was measurable processor CPU in the small-JSON load. The
// label values are bounded (see the package comment), so the cache is too;
// maxChildren only guards against a mistake: past it, lookups go to the
// vector as before.
type children[K comparable, M any] struct {
	mu sync.RWMutex
	m  map[K]M
}

const maxChildren = 4096

// get returns k's child, made by mk the first time.
func (c *children[K, M]) get(k K, mk func(K) M) M {
	c.mu.RLock()
	v, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return v
	}
	v = mk(k)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) < maxChildren {
		if c.m == nil {
			c.m = make(map[K]M)
		}
		c.m[k] = v
	}
	return v
}

// tokenCounters are tokenwarden_tokens_total's four classes of one model
// and source.
type tokenCounters struct{ input, output, cacheRead, cacheWrite prometheus.Counter }

// outcomeChildren are the children Outcome, Admission, StoreCall and
// ProviderResponse write on every exchange.
type outcomeChildren struct {
	requests     children[[3]string, prometheus.Counter] // dialect, model, result
	tokens       children[[2]string, *tokenCounters]     // model, source
	cost         children[string, prometheus.Counter]    // model
	spend        children[[4]string, prometheus.Counter] // tenant, model, source, api
	admissions   children[[2]string, prometheus.Counter] // tenant, result
	storeSeconds children[string, prometheus.Observer]   // op
	status       children[[2]string, prometheus.Counter] // dialect, code
	remaining    children[[2]string, prometheus.Gauge]   // host, window
}
