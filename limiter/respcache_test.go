package limiter

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// cacheHarness is one ResponseCache under the shared suite.
type cacheHarness struct {
	c ResponseCache
	// advance lets d of the cache's time pass (a fake clock jumps, Redis
	// sleeps).
	advance func(d time.Duration)
}

func memoryCacheHarness() cacheHarness {
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	c := NewMemoryCache(MemoryCacheOptions{Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }})
	return cacheHarness{c: c, advance: func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }}
}

func redisCacheHarness(t *testing.T, c redis.UniversalClient) cacheHarness {
	rc, err := NewRedisCache(RedisCacheOptions{Client: c, Timeout: testTimeout})
	if err != nil {
		t.Fatal(err)
	}
	return cacheHarness{c: rc, advance: time.Sleep}
}

func cacheKey(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:16])
}

// incompressible returns n random bytes: their stored size is known
// (n+1, kept raw), so bounds can be tested exactly.
func incompressible(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestMemoryCacheConformance(t *testing.T) {
	runCacheSuite(t, func(t *testing.T) cacheHarness { return memoryCacheHarness() })
}

func TestRedisCacheConformance(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	runCacheSuite(t, func(t *testing.T) cacheHarness { return redisCacheHarness(t, c) })
}

func TestRedisClusterCacheConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Redis Cluster")
	}
	cl := redistest.StartCluster(t, 3)
	c := newClusterClient(t, cl.Addrs())
	runCacheSuite(t, func(t *testing.T) cacheHarness { return redisCacheHarness(t, c) })
}

func runCacheSuite(t *testing.T, newHarness func(t *testing.T) cacheHarness) {
	const big = 1 << 30
	t.Run("round trip and miss", func(t *testing.T) {
		h := newHarness(t)
		org := newTenant("rt")
		if _, ok, err := h.c.Get(ctxb, org, cacheKey("a")); ok || err != nil {
			t.Fatalf("empty cache: ok=%v err=%v", ok, err)
		}
		for i, v := range [][]byte{
			bytes.Repeat([]byte(`{"type":"message","content":[{"type":"text","text":"hello"}]}`), 200),
			incompressible(3000, 1),
			{'x'},
		} {
			k := cacheKey(fmt.Sprint("v", i))
			r, err := h.c.Put(ctxb, org, k, v, time.Minute, big, big)
			if err != nil || !r.Stored {
				t.Fatalf("Put %d: %+v %v", i, r, err)
			}
			got, ok, err := h.c.Get(ctxb, org, k)
			if err != nil || !ok || !bytes.Equal(got, v) {
				t.Fatalf("Get %d: ok=%v err=%v equal=%v", i, ok, err, bytes.Equal(got, v))
			}
		}
	})
	t.Run("orgs never see each other's entries", func(t *testing.T) {
		h := newHarness(t)
		a, b := newTenant("a"), newTenant("b")
		k := cacheKey("same request")
		if _, err := h.c.Put(ctxb, a, k, []byte("a's answer"), time.Minute, big, big); err != nil {
			t.Fatal(err)
		}
		if _, ok, err := h.c.Get(ctxb, b, k); ok || err != nil {
			t.Fatalf("org b read org a's entry: ok=%v err=%v", ok, err)
		}
		// A shared partition is apart from every org, even one named like it.
		if _, ok, _ := h.c.Get(ctxb, SharedCacheOrg(a), k); ok {
			t.Fatal("the shared partition read an org's entry")
		}
		if _, err := h.c.Put(ctxb, SharedCacheOrg("p"), k, []byte("shared"), time.Minute, big, big); err != nil {
			t.Fatal(err)
		}
		if v, ok, _ := h.c.Get(ctxb, "p", k); ok {
			t.Fatalf("org p read the shared partition of policy p: %q", v)
		}
		if v, ok, _ := h.c.Get(ctxb, SharedCacheOrg("p"), k); !ok || string(v) != "shared" {
			t.Fatalf("shared partition: %q %v", v, ok)
		}
	})
	t.Run("an entry over a bound is not stored", func(t *testing.T) {
		h := newHarness(t)
		org := newTenant("max")
		v := incompressible(1000, 2)
		size := StoredSize(len(v) + 1)
		r, err := h.c.Put(ctxb, org, cacheKey("x"), v, time.Minute, size-1, big)
		if err != nil || r.Stored {
			t.Fatalf("over max entry: %+v %v", r, err)
		}
		r, err = h.c.Put(ctxb, org, cacheKey("x"), v, time.Minute, big, size-1)
		if err != nil || r.Stored {
			t.Fatalf("over max org: %+v %v", r, err)
		}
		if r, err = h.c.Put(ctxb, org, cacheKey("x"), v, time.Minute, size, size); err != nil || !r.Stored || r.OrgBytes != size {
			t.Fatalf("exactly at both bounds: %+v %v (size %d)", r, err, size)
		}
	})
	t.Run("least recently used out first, within the org's bound", func(t *testing.T) {
		h := newHarness(t)
		org := newTenant("lru")
		size := StoredSize(1001)
		maxOrg := 3 * size
		put := func(name string) PutResult {
			t.Helper()
			r, err := h.c.Put(ctxb, org, cacheKey(name), incompressible(1000, uint64(len(name))), time.Minute, big, maxOrg)
			if err != nil || !r.Stored {
				t.Fatalf("Put %s: %+v %v", name, r, err)
			}
			if r.OrgBytes > maxOrg {
				t.Fatalf("Put %s: org holds %d bytes, bound %d", name, r.OrgBytes, maxOrg)
			}
			return r
		}
		has := func(name string) bool {
			_, ok, err := h.c.Get(ctxb, org, cacheKey(name))
			if err != nil {
				t.Fatal(err)
			}
			return ok
		}
		put("a")
		put("bb")
		put("ccc")
		if !has("a") { // a is now the most recently used; bb the least
			t.Fatal("a missing")
		}
		if r := put("dddd"); r.Evicted != 1 || r.OrgBytes != maxOrg {
			t.Fatalf("fourth put: %+v", r)
		}
		if has("bb") || !has("a") || !has("ccc") || !has("dddd") {
			t.Fatalf("after eviction: bb=%v a=%v ccc=%v dddd=%v", has("bb"), has("a"), has("ccc"), has("dddd"))
		}
		// Replacing an entry does not count it twice.
		if r := put("a"); r.Evicted != 0 || r.OrgBytes != maxOrg {
			t.Fatalf("replace: %+v", r)
		}
		// Writing far past the bound keeps the org within it.
		for i := range 20 {
			put(fmt.Sprint("flood", i))
		}
		if has("a") || !has("flood19") {
			t.Fatal("flood: the oldest entries should be gone and the newest kept")
		}
	})
	t.Run("entries expire by TTL and then stop counting", func(t *testing.T) {
		h := newHarness(t)
		org := newTenant("ttl")
		size := StoredSize(1001)
		if _, err := h.c.Put(ctxb, org, cacheKey("short"), incompressible(1000, 3), 150*time.Millisecond, big, 2*size); err != nil {
			t.Fatal(err)
		}
		if _, err := h.c.Put(ctxb, org, cacheKey("long"), incompressible(1000, 4), time.Minute, big, 2*size); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := h.c.Get(ctxb, org, cacheKey("short")); !ok {
			t.Fatal("short entry missing before its TTL")
		}
		h.advance(300 * time.Millisecond)
		if _, ok, _ := h.c.Get(ctxb, org, cacheKey("short")); ok {
			t.Fatal("short entry served after its TTL")
		}
		// The expired entry's bytes no longer count: a new one fits
		// without evicting the live one.
		r, err := h.c.Put(ctxb, org, cacheKey("new"), incompressible(1000, 5), time.Minute, big, 2*size)
		if err != nil || !r.Stored || r.Evicted != 0 || r.OrgBytes != 2*size {
			t.Fatalf("after expiry: %+v %v", r, err)
		}
		if _, ok, _ := h.c.Get(ctxb, org, cacheKey("long")); !ok {
			t.Fatal("long entry evicted")
		}
	})
	t.Run("invalid arguments", func(t *testing.T) {
		h := newHarness(t)
		for _, tc := range []struct {
			org, key string
			ttl      time.Duration
		}{
			{"", cacheKey("k"), time.Minute},
			{"o\x00x", cacheKey("k"), time.Minute},
			{SharedCacheOrg(""), cacheKey("k"), time.Minute},
			{"o", "", time.Minute},
			{"o", "NOT-HEX", time.Minute},
			{"o", strings.Repeat("a", MaxCacheKey+1), time.Minute},
			{"o", cacheKey("k"), 0},
		} {
			if _, err := h.c.Put(ctxb, tc.org, tc.key, []byte("v"), tc.ttl, big, big); !errors.Is(err, ErrCacheInvalid) {
				t.Errorf("Put(%q, %q, %s) = %v, want ErrCacheInvalid", tc.org, tc.key, tc.ttl, err)
			}
		}
		if _, _, err := h.c.Get(ctxb, "o", "zz"); !errors.Is(err, ErrCacheInvalid) {
			t.Errorf("Get with a bad key: %v", err)
		}
	})
}

func TestStoredSizeIsJemallocsClass(t *testing.T) {
	for _, tc := range []struct{ n, class int64 }{
		{1, 16}, {16, 16}, {17, 32}, {100, 112}, {128, 128}, {129, 160}, {160, 160}, {161, 192},
		{1000, 1024}, {1025, 1280}, {8193, 10240}, {1 << 20, 1 << 20}, {1<<20 + 1, 1<<20 + 1<<18},
	} {
		if got := sizeClass(tc.n); got != tc.class {
			t.Errorf("sizeClass(%d) = %d, want %d", tc.n, got, tc.class)
		}
	}
}

func TestCompressValue(t *testing.T) {
	text := bytes.Repeat([]byte(`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}`+"\n\n"), 100)
	for _, v := range [][]byte{nil, {}, text, incompressible(500, 9)} {
		c := compressValue(v)
		if len(c) > len(v)+1 {
			t.Errorf("compressed %d bytes into %d", len(v), len(c))
		}
		got, err := decompressValue(c)
		if err != nil || !bytes.Equal(got, v) {
			t.Errorf("round trip of %d bytes: %v", len(v), err)
		}
	}
	if c := compressValue(text); len(c)*5 > len(text) {
		t.Errorf("SSE text compressed only to %d of %d bytes", len(c), len(text))
	}
	for _, bad := range [][]byte{nil, {'q'}, {formZstd, 1, 2, 3}} {
		if _, err := decompressValue(bad); err == nil {
			t.Errorf("decompressValue(%q) succeeded", bad)
		}
	}
}

// FuzzDecompressValue: whatever a store hands back (corrupt, truncated,
// written by something else), decoding fails cleanly or yields at most
// MaxCacheValue bytes; a value it wrote always comes back.
func FuzzDecompressValue(f *testing.F) {
	f.Add(compressValue([]byte(`{"id":"msg_1","usage":{"input_tokens":3}}`)))
	f.Add(compressValue(incompressible(64, 1)))
	f.Add([]byte{formZstd, 0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, b []byte) {
		if out, err := decompressValue(b); err == nil && len(out) > MaxCacheValue {
			t.Fatalf("decoded %d bytes", len(out))
		}
		out, err := decompressValue(compressValue(b))
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// TestRedisCacheUnavailableIsFastAfterward: a Redis that is gone costs the
// first call its timeout and the calls within Backoff nothing.
func TestRedisCacheUnavailableIsFastAfterward(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	rc, err := NewRedisCache(RedisCacheOptions{Client: c, Timeout: 200 * time.Millisecond, Backoff: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	if _, _, err := rc.Get(ctxb, "o", cacheKey("k")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get with Redis gone: %v", err)
	}
	start := time.Now()
	_, _, err = rc.Get(ctxb, "o", cacheKey("k"))
	if !errors.Is(err, ErrCacheSkipped) || time.Since(start) > 10*time.Millisecond {
		t.Fatalf("second Get: %v after %s", err, time.Since(start))
	}
	if _, err := rc.Put(ctxb, "o", cacheKey("k"), []byte("v"), time.Minute, 1<<20, 1<<20); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Put: %v", err)
	}
}

// TestResponseCacheRedisMemory writes far past an org's bound and checks,
// with MEMORY USAGE over every key of the org, that Redis holds no more
// than the bound (plus the few hundred bytes of the three index keys'
// own headers), and that CacheEntryOverhead covers what an entry costs
// Redis besides its value.
func TestResponseCacheRedisMemory(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	h := redisCacheHarness(t, c)
	measure := func(org string) (total int64, keys int) {
		t.Helper()
		ks, err := c.Keys(ctxb, cachePrefix(org)+"*").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			n, err := c.MemoryUsage(ctxb, k, 0).Result()
			if err != nil {
				t.Fatal(err)
			}
			total += n
		}
		return total, len(ks)
	}
	// Index keys' fixed cost, met by every org once: measured with one
	// tiny entry, then its share is subtracted below.
	const indexSlack = 1024
	for _, tc := range []struct {
		name      string
		valueSize int
		maxOrg    int64
	}{
		{"small entries", 200, 256 << 10},
		{"1KB entries", 1000, 512 << 10},
		{"16KB entries", 16 << 10, 2 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			org := newTenant("mem")
			var last PutResult
			n := 0
			for i := 0; int64(i)*StoredSize(tc.valueSize+1) < 3*tc.maxOrg; i++ {
				r, err := h.c.Put(ctxb, org, cacheKey(fmt.Sprint(org, i)), incompressible(tc.valueSize, uint64(i)), time.Minute, 1<<30, tc.maxOrg)
				if err != nil || !r.Stored {
					t.Fatalf("Put %d: %+v %v", i, r, err)
				}
				last, n = r, i+1
			}
			used, keys := measure(org)
			entries := keys - 3
			t.Logf("%d puts of %d bytes: %d entries kept, accounted %d bytes, Redis MEMORY USAGE %d bytes (bound %d); %.0f bytes of Redis memory per entry beyond its value",
				n, tc.valueSize, entries, last.OrgBytes, used, tc.maxOrg, float64(used-int64(entries*(tc.valueSize+1)))/float64(entries))
			if last.OrgBytes > tc.maxOrg {
				t.Errorf("accounted %d bytes, over the bound %d", last.OrgBytes, tc.maxOrg)
			}
			if used > tc.maxOrg+indexSlack {
				t.Errorf("Redis holds %d bytes for the org, over the bound %d (+%d for the index keys)", used, tc.maxOrg, indexSlack)
			}
			if used < last.OrgBytes/2 {
				t.Errorf("accounting (%d) far above what Redis holds (%d): the bound wastes memory", last.OrgBytes, used)
			}
		})
	}
}
