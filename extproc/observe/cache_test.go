package observe

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
)

func TestCacheMetrics(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	m.CacheLookup("acme", gate.CacheHit, "")
	m.CacheLookup("acme", gate.CacheBypass, gate.BypassSampling)
	m.CacheHit("acme", "claude-sonnet-4-5", accounting.Usage{InputTokens: 10, OutputTokens: 5, CacheReadTokens: 100}, 1_500_000)
	m.CacheStored("acme", 4096, 2)
	m.CacheStored("", 1, 3)
	m.CacheCall("get", 0, errors.New("down"))
	c := m.cache
	for _, tc := range []struct {
		got, want float64
		what      string
	}{
		{testutil.ToFloat64(c.lookups.WithLabelValues("acme", "hit", "none")), 1, "hits"},
		{testutil.ToFloat64(c.lookups.WithLabelValues("acme", "bypass", "sampling")), 1, "bypasses"},
		{testutil.ToFloat64(c.savedReqs.WithLabelValues("acme", "claude-sonnet-4-5")), 1, "saved requests"},
		{testutil.ToFloat64(c.savedTokens.WithLabelValues("acme", "claude-sonnet-4-5", "cache_read", "measured")), 100, "saved cache reads"},
		{testutil.ToFloat64(c.savedUSD.WithLabelValues("acme", "claude-sonnet-4-5", "measured")), 0.0015, "saved USD"},
		{testutil.ToFloat64(c.bytes.WithLabelValues("acme")), 4096, "bytes"},
		{testutil.ToFloat64(c.evictions.WithLabelValues("other")), 3, "evictions of unlabelled tenants"},
		{testutil.ToFloat64(c.storeErrors.WithLabelValues("get")), 1, "errors"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %v, want %v", tc.what, tc.got, tc.want)
		}
	}
}
