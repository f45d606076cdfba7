package policy

import (
	"strings"
	"testing"
	"time"
)

func TestResponseCacheDefaultsAndShapes(t *testing.T) {
	c, err := Parse([]byte(`
policies:
  default: {}
  cached:
    response_cache: {enabled: true}
  tuned:
    response_cache:
      enabled: true
      ttl: 1h
      max_entry_bytes: 2048
      max_org_bytes: 65536
      shared: true
      count_requests: true
      cacheable:
        - {max_temperature: 0}
        - {max_temperature: 0.7, seed: true}
        - {any_temperature: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := c.Policy("t", "default"); p.ResponseCache.Enabled {
		t.Error("the cache is on without response_cache")
	}
	p, _ := c.Policy("t", "cached")
	rc := p.ResponseCache
	if !rc.Enabled || rc.TTL != DefaultResponseCacheTTL || rc.MaxEntryBytes != DefaultCacheMaxEntryBytes ||
		rc.MaxOrgBytes != DefaultCacheMaxOrgBytes || rc.Shared || rc.CountRequests ||
		len(rc.Cacheable) != 1 || rc.Cacheable[0] != (CacheShape{MaxTemperature: 0}) {
		t.Errorf("defaults: %+v", rc)
	}
	p, _ = c.Policy("t", "tuned")
	rc = p.ResponseCache
	want := []CacheShape{{}, {MaxTemperature: 0.7, Seed: true}, {AnyTemperature: true}}
	if rc.TTL != time.Hour || rc.MaxEntryBytes != 2048 || rc.MaxOrgBytes != 65536 || !rc.Shared || !rc.CountRequests || len(rc.Cacheable) != 3 {
		t.Fatalf("tuned: %+v", rc)
	}
	for i := range want {
		if rc.Cacheable[i] != want[i] {
			t.Errorf("shape %d: %+v, want %+v", i, rc.Cacheable[i], want[i])
		}
	}
}

func TestResponseCacheRejects(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{`{enabled: true, ttl: 100ms}`, "response_cache.ttl"},
		{`{enabled: true, ttl: 200h}`, "response_cache.ttl"},
		{`{enabled: true, max_entry_bytes: 0}`, "max_entry_bytes"},
		{`{enabled: true, max_entry_bytes: 4096, max_org_bytes: 1024}`, "max_org_bytes"},
		{`{enabled: true, cacheable: [{seed: true}]}`, "cacheable[0]: name max_temperature"},
		{`{enabled: true, cacheable: [{max_temperature: 0, any_temperature: true}]}`, "exclude each other"},
		{`{enabled: true, cacheable: [{max_temperature: 3}]}`, "max_temperature"},
		{`{enabled: true, shard: true}`, "unknown field"},
	} {
		_, err := Parse([]byte("policies:\n  p:\n    response_cache: " + tc.yaml + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
