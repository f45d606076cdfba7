package extproc

import "sync"

// prefixTracker remembers the last stable-prefix fingerprint (tools + system)
// seen per policy and tenant, and counts each change under the policy. A
// template that leaks a timestamp or an id into its system prompt changes it
// on every request — and silently defeats the prompt cache — which shows up
// as a climbing tokenwarden_prompt_prefix_changes_total.
type prefixTracker struct {
	mu   sync.Mutex
	last map[prefixKey]uint64
}

type prefixKey struct{ policy, tenant string }

// maxPrefixKeys bounds the memory; past it the tracker starts over, which
// costs at most one uncounted change per key.
const maxPrefixKeys = 100_000

func newPrefixTracker() *prefixTracker { return &prefixTracker{last: map[prefixKey]uint64{}} }

func (p *prefixTracker) observe(x *exchange, body []byte) {
	fp, ok := x.dialect.prefixFingerprint(body, &x.req)
	if !ok {
		return
	}
	k := prefixKey{x.policy.Name, x.tenant}
	p.mu.Lock()
	prev, seen := p.last[k]
	if !seen && len(p.last) >= maxPrefixKeys {
		p.last = map[prefixKey]uint64{}
	}
	p.last[k] = fp
	p.mu.Unlock()
	if seen && prev != fp {
		x.s.opts.Metrics.PrefixChanges.WithLabelValues(x.policy.Name).Inc()
	}
}
