package limiter

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// ResponseCache keeps complete LLM responses for an exact response cache,
// partitioned by org: an entry stored for one org is invisible to every
// other, because the org is part of every key (tw:{org}:rc:…, the org's
// hash tag, so the cache shares the Redis Cluster slot of the org's limiter
// state). Within an org, entries are bounded in size one by one and in
// total; past the total the least recently used entries are evicted first,
// and every entry expires by its TTL.
//
// Values are opaque to the store (the gate encodes what it keeps) and
// compressed by it, so the bounds count what the store really holds: the
// compressed value plus a fixed per-entry overhead (StoredSize).
//
// A cache is an optimisation: callers treat any error as a miss, never as a
// reason to refuse a request.
type ResponseCache interface {
	// Get returns the value stored under key for org and marks it most
	// recently used; ok is false when there is none (never stored, expired
	// or evicted).
	Get(ctx context.Context, org, key string) (value []byte, ok bool, err error)
	// Put stores value under key for org for ttl, replacing what was there.
	// An entry whose StoredSize exceeds maxEntry or maxOrg is not stored
	// (Stored false, no error); otherwise the org's least recently used
	// entries are evicted until its total fits in maxOrg.
	Put(ctx context.Context, org, key string, value []byte, ttl time.Duration, maxEntry, maxOrg int64) (PutResult, error)
	Close() error
}

// PutResult is what one Put did.
type PutResult struct {
	Stored bool
	// Evicted counts the entries evicted to make room (least recently used
	// first); entries found expired are dropped too but not counted.
	Evicted int
	// OrgBytes is the org's total StoredSize after the Put.
	OrgBytes int64
}

// SharedCacheOrg is the org of a cache partition shared by every org of a
// policy that says so: its keys live under tw:rc:{<policy>}:, a prefix no
// org's keys (tw:{<org>}:…) can ever take, whatever the org is named.
func SharedCacheOrg(policy string) string { return sharedOrgMark + policy }

// sharedOrgMark starts a shared partition's org; no org name can start with
// it, since names that reach the cache are checked (validCacheOrg).
const sharedOrgMark = "\x00shared:"

// cachePrefix is where an org's cache keys live.
func cachePrefix(org string) string {
	if p, ok := strings.CutPrefix(org, sharedOrgMark); ok {
		return "tw:rc:{" + tagEscaper.Replace(p) + "}:"
	}
	return tenantPrefix(org) + "rc:"
}

// Bounds of cache arguments.
const (
	// MaxCacheKey bounds a cache key's length; keys are hex digests.
	MaxCacheKey = 128
	// MaxCacheValue bounds one value before compression, and what a Get
	// decompresses, so a corrupt or hostile value cannot exhaust memory.
	MaxCacheValue = 64 << 20
)

// ErrCacheInvalid is returned for arguments no store accepts.
var ErrCacheInvalid = errors.New("limiter: invalid response cache request")

func validateCacheGet(org, key string) error {
	if !validCacheOrg(org) {
		return fmt.Errorf("%w: org %q", ErrCacheInvalid, org)
	}
	if len(key) == 0 || len(key) > MaxCacheKey {
		return fmt.Errorf("%w: key of %d bytes", ErrCacheInvalid, len(key))
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("%w: key is not lower-case hex", ErrCacheInvalid)
		}
	}
	return nil
}

func validateCachePut(org, key string, value []byte, ttl time.Duration, maxEntry, maxOrg int64) error {
	if err := validateCacheGet(org, key); err != nil {
		return err
	}
	switch {
	case len(value) > MaxCacheValue:
		return fmt.Errorf("%w: value of %d bytes, above %d", ErrCacheInvalid, len(value), MaxCacheValue)
	case ttl < time.Millisecond:
		return fmt.Errorf("%w: ttl %s below 1ms", ErrCacheInvalid, ttl)
	case maxEntry <= 0 || maxOrg <= 0:
		return fmt.Errorf("%w: non-positive bounds %d, %d", ErrCacheInvalid, maxEntry, maxOrg)
	}
	return nil
}

// validCacheOrg accepts a non-empty org without NUL bytes (which only the
// shared partition's mark has), or a shared partition.
func validCacheOrg(org string) bool {
	if p, ok := strings.CutPrefix(org, sharedOrgMark); ok {
		return p != "" && !strings.Contains(p, "\x00")
	}
	return org != "" && !strings.Contains(org, "\x00")
}

// CacheEntryOverhead is what one entry costs the store besides its value:
// in Redis the value key's name, object header and expiry, and the entry's
// row in the size hash and in the two sorted sets of its org (last use and
// expiry). MEMORY USAGE on Redis 7 shows about 450 bytes per entry once an
// org holds a few hundred (limiter TestResponseCacheRedisMemory logs it);
// this bound leaves room above that, and the memory store counts the same,
// so both evict alike.
const CacheEntryOverhead = 640

// StoredSize is what an entry whose compressed value has n bytes counts
// against the bounds: the allocation Redis makes for the value (jemalloc
// rounds every allocation up to its size class: at most a quarter more, see
// https://jemalloc.net/jemalloc.3.html "Size classes") and
// CacheEntryOverhead.
func StoredSize(n int) int64 {
	// An sds string: a header of up to 9 bytes and the terminating NUL.
	return sizeClass(int64(n)+10) + CacheEntryOverhead
}

// sizeClass rounds n up to jemalloc's size class: multiples of 16 up to
// 128, then four classes per doubling.
func sizeClass(n int64) int64 {
	if n <= 128 {
		return (n + 15) &^ 15
	}
	step := int64(1) << (bits.Len64(uint64(n-1)) - 3)
	return (n + step - 1) &^ (step - 1)
}

// Stored values start with a byte naming their form: compressed with zstd,
// or kept raw when compression would not make them smaller.
const (
	formRaw  = 'r'
	formZstd = 'z'
)

var (
	zstdOnce sync.Once
	zstdEnc  *zstd.Encoder
	zstdDec  *zstd.Decoder
)

// zstdCodec returns the shared encoder and decoder; EncodeAll and DecodeAll
// are safe for concurrent use
// (https://pkg.go.dev/github.com/klauspost/compress/zstd).
func zstdCodec() (*zstd.Encoder, *zstd.Decoder) {
	zstdOnce.Do(func() {
		var err error
		// The default level: LLM responses (JSON, SSE) shrink three to
		// eight times, at a few hundred MB/s, off the client's path (Put
		// runs after the response was delivered).
		zstdEnc, err = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(true))
		if err != nil {
			panic(err) // only invalid options fail
		}
		zstdDec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxCacheValue))
		if err != nil {
			panic(err)
		}
	})
	return zstdEnc, zstdDec
}

// compressValue is a value as the stores keep it.
func compressValue(v []byte) []byte {
	enc, _ := zstdCodec()
	out := make([]byte, 1, 1+len(v)/2)
	out[0] = formZstd
	out = enc.EncodeAll(v, out)
	if len(out) >= 1+len(v) {
		out = append(append(out[:0], formRaw), v...)
	}
	return out
}

// decompressValue reverses compressValue; anything else (a value written
// by something else, a truncated one) is an error, never a panic, and never
// decodes to more than MaxCacheValue bytes.
func decompressValue(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return nil, errors.New("limiter: empty cache value")
	}
	switch b[0] {
	case formRaw:
		if len(b)-1 > MaxCacheValue {
			return nil, errors.New("limiter: cache value too large")
		}
		return b[1:], nil
	case formZstd:
		_, dec := zstdCodec()
		out, err := dec.DecodeAll(b[1:], nil)
		if err != nil {
			return nil, fmt.Errorf("limiter: cache value: %w", err)
		}
		if len(out) > MaxCacheValue {
			return nil, errors.New("limiter: cache value too large")
		}
		return out, nil
	}
	return nil, fmt.Errorf("limiter: cache value of unknown form %q", b[0])
}
