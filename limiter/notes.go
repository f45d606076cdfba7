package limiter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Notes is a store that keeps small records of one tenant beside its
// admission state, each with a TTL, under the tenant's hash tag: what a
// later request of the same org, on any replica, needs to know about an
// earlier one — the estimate of an uploaded OpenAI batch file, kept until a
// batch names it — and counters of what happened (batch spend by month).
// They decide nothing by themselves: a missing note is what the caller
// must handle safely (refuse what it cannot price).
type Notes interface {
	// PutNote writes (or replaces) a note.
	PutNote(ctx context.Context, n Note) error
	// GetNote reads a note; ok is false when it is absent or expired.
	GetNote(ctx context.Context, tenant, key string) (value []byte, ok bool, err error)
	// AddNoteCount adds delta to the counter key, keeping it at least ttl.
	AddNoteCount(ctx context.Context, tenant, key string, delta int64, ttl time.Duration) error
	// NoteCounts reads counters; an absent one reads 0.
	NoteCounts(ctx context.Context, tenant string, keys []string) ([]int64, error)
}

// Note is one small record of a tenant.
type Note struct {
	Tenant, Key string
	Value       []byte
	TTL         time.Duration
}

// Note bounds: a note is a record, not a cache of bodies, and its key is a
// name the caller builds (a provider's file or batch id), kept out of the
// key separators.
const (
	MaxNoteBytes = 4 << 10
	MaxNoteKey   = 200
	MaxNoteTTL   = 400 * 24 * time.Hour
	// MaxMemoryNotes bounds the notes and counters a Memory store holds;
	// past it a write is refused (ErrNotesFull) after expired ones are dropped.
	MaxMemoryNotes = 100_000
)

// ErrNotesFull is returned by a Memory store holding MaxMemoryNotes live
// notes.
var ErrNotesFull = errors.New("limiter: the memory store holds the most notes it may")

func validateNote(tenant, key string, ttl time.Duration, size int) error {
	if err := validateIDs(tenant, key); err != nil {
		return err
	}
	if len(key) > MaxNoteKey || strings.ContainsAny(key, "{}\n") {
		return errInvalidf("note key %q", key)
	}
	if ttl < time.Millisecond || ttl > MaxNoteTTL {
		return errInvalidf("note ttl %s outside 1ms..%s", ttl, MaxNoteTTL)
	}
	if size > MaxNoteBytes {
		return errInvalidf("note of %d bytes, more than %d", size, MaxNoteBytes)
	}
	return nil
}

// Keys: tw:{tenant}:n:<key> for a note, tw:{tenant}:nc:<key> for a counter.
func noteKey(tenant, key string) string  { return tenantPrefix(tenant) + "n:" + key }
func countKey(tenant, key string) string { return tenantPrefix(tenant) + "nc:" + key }

// PutNote implements Notes (one SET PX).
func (r *Redis) PutNote(ctx context.Context, n Note) error {
	if err := validateNote(n.Tenant, n.Key, n.TTL, len(n.Value)); err != nil {
		return err
	}
	return r.call(ctx, "put note", func(ctx context.Context) error {
		return r.client.Set(ctx, noteKey(n.Tenant, n.Key), n.Value, n.TTL).Err()
	})
}

// GetNote implements Notes (one GET).
func (r *Redis) GetNote(ctx context.Context, tenant, key string) ([]byte, bool, error) {
	if err := validateNote(tenant, key, time.Second, 0); err != nil {
		return nil, false, err
	}
	var v []byte
	var found bool
	err := r.call(ctx, "get note", func(ctx context.Context) error {
		b, err := r.client.Get(ctx, noteKey(tenant, key)).Bytes()
		if errors.Is(err, redis.Nil) {
			return nil
		}
		v, found = b, err == nil
		return err
	})
	return v, found, err
}

// AddNoteCount implements Notes: INCRBY and an expiry only ever extended,
// in one transaction (one round trip).
func (r *Redis) AddNoteCount(ctx context.Context, tenant, key string, delta int64, ttl time.Duration) error {
	if err := validateNote(tenant, key, ttl, 0); err != nil {
		return err
	}
	k := countKey(tenant, key)
	return r.call(ctx, "add note count", func(ctx context.Context) error {
		_, err := r.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.IncrBy(ctx, k, delta)
			p.ExpireGT(ctx, k, ttl)
			p.ExpireNX(ctx, k, ttl)
			return nil
		})
		return err
	})
}

// NoteCounts implements Notes (one MGET).
func (r *Redis) NoteCounts(ctx context.Context, tenant string, keys []string) ([]int64, error) {
	ks := make([]string, len(keys))
	for i, k := range keys {
		if err := validateNote(tenant, k, time.Second, 0); err != nil {
			return nil, err
		}
		ks[i] = countKey(tenant, k)
	}
	out := make([]int64, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	err := r.call(ctx, "note counts", func(ctx context.Context) error {
		vs, err := r.client.MGet(ctx, ks...).Result()
		if err != nil {
			return err
		}
		for i, v := range vs {
			if v == nil {
				continue
			}
			if out[i], err = asInt(v); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// call runs one plain command under the store's in-flight bound and
// deadline, its errors classified as run classifies a script's.
func (r *Redis) call(ctx context.Context, what string, fn func(context.Context) error) error {
	if err := r.acquire(ctx); err != nil {
		return fmt.Errorf("limiter: %s: %w", what, err)
	}
	defer func() { <-r.slots }()
	callCtx, cancel := context.WithTimeout(ctx, r.callTimeout)
	defer cancel()
	err := fn(callCtx)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, redis.ErrPoolTimeout):
		return fmt.Errorf("limiter: %s: %w: %w", what, ErrShed, err)
	case ctx.Err() != nil:
		return fmt.Errorf("limiter: %s: %w (%w)", what, ctx.Err(), err)
	case unavailable(err):
		return fmt.Errorf("limiter: %s: %w: %w", what, ErrUnavailable, err)
	}
	return fmt.Errorf("limiter: %s: %w", what, err)
}

// memNote is a note or counter of a Memory store.
type memNote struct {
	value    []byte
	count    int64
	deadline int64 // µs
}

// PutNote implements Notes.
func (m *Memory) PutNote(_ context.Context, n Note) error {
	if err := validateNote(n.Tenant, n.Key, n.TTL, len(n.Value)); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := unixMicros(m.now())
	k := noteKey(n.Tenant, n.Key)
	if err := m.roomForNote(k, now); err != nil {
		return err
	}
	m.notes[k] = &memNote{value: append([]byte(nil), n.Value...), deadline: now + int64(n.TTL/time.Microsecond)}
	return nil
}

// GetNote implements Notes.
func (m *Memory) GetNote(_ context.Context, tenant, key string) ([]byte, bool, error) {
	if err := validateNote(tenant, key, time.Second, 0); err != nil {
		return nil, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.notes[noteKey(tenant, key)]
	if n == nil || n.deadline <= unixMicros(m.now()) {
		return nil, false, nil
	}
	return append([]byte(nil), n.value...), true, nil
}

// AddNoteCount implements Notes.
func (m *Memory) AddNoteCount(_ context.Context, tenant, key string, delta int64, ttl time.Duration) error {
	if err := validateNote(tenant, key, ttl, 0); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := unixMicros(m.now())
	k := countKey(tenant, key)
	n := m.notes[k]
	if n == nil || n.deadline <= now {
		if err := m.roomForNote(k, now); err != nil {
			return err
		}
		n = &memNote{}
		m.notes[k] = n
	}
	n.count += delta
	n.deadline = max(n.deadline, now+int64(ttl/time.Microsecond))
	return nil
}

// NoteCounts implements Notes.
func (m *Memory) NoteCounts(_ context.Context, tenant string, keys []string) ([]int64, error) {
	out := make([]int64, len(keys))
	m.mu.Lock()
	defer m.mu.Unlock()
	now := unixMicros(m.now())
	for i, k := range keys {
		if err := validateNote(tenant, k, time.Second, 0); err != nil {
			return nil, err
		}
		if n := m.notes[countKey(tenant, k)]; n != nil && n.deadline > now {
			out[i] = n.count
		}
	}
	return out, nil
}

// roomForNote makes room for key k: a replaced key needs none; otherwise
// expired notes are dropped when the map is full, and a full map of live
// ones refuses the write.
func (m *Memory) roomForNote(k string, now int64) error {
	if m.notes == nil {
		m.notes = map[string]*memNote{}
	}
	if _, ok := m.notes[k]; ok || len(m.notes) < MaxMemoryNotes {
		return nil
	}
	for key, n := range m.notes {
		if n.deadline <= now {
			delete(m.notes, key)
		}
	}
	if len(m.notes) >= MaxMemoryNotes {
		return ErrNotesFull
	}
	return nil
}

// Notes on a Resilient store are the primary's: a note kept only locally
// would be missing on every other replica, so a primary that is down is an
// error (ErrUnavailable) for the caller to handle, not a local note. A
// Leased store's are its inner store's. Both forward with notesOf.

// notesOf implements Notes on the store s, which may keep none (then every
// call is an error).
type notesOf struct{ s Store }

// PutNote implements Notes on the store.
func (f notesOf) PutNote(ctx context.Context, n Note) error {
	ns, err := f.notes()
	if err != nil {
		return err
	}
	return ns.PutNote(ctx, n)
}

// GetNote implements Notes on the store.
func (f notesOf) GetNote(ctx context.Context, tenant, key string) ([]byte, bool, error) {
	ns, err := f.notes()
	if err != nil {
		return nil, false, err
	}
	return ns.GetNote(ctx, tenant, key)
}

// AddNoteCount implements Notes on the store.
func (f notesOf) AddNoteCount(ctx context.Context, tenant, key string, delta int64, ttl time.Duration) error {
	ns, err := f.notes()
	if err != nil {
		return err
	}
	return ns.AddNoteCount(ctx, tenant, key, delta, ttl)
}

// NoteCounts implements Notes on the store.
func (f notesOf) NoteCounts(ctx context.Context, tenant string, keys []string) ([]int64, error) {
	ns, err := f.notes()
	if err != nil {
		return nil, err
	}
	return ns.NoteCounts(ctx, tenant, keys)
}

// errNoNotes: the store keeps no notes.
var errNoNotes = errors.New("limiter: the store keeps no notes")

func (f notesOf) notes() (Notes, error) {
	ns, ok := f.s.(Notes)
	if !ok {
		return nil, errNoNotes
	}
	return ns, nil
}

var (
	_ Notes = (*Redis)(nil)
	_ Notes = (*Memory)(nil)
	_ Notes = (*Resilient)(nil)
	_ Notes = (*Leased)(nil)
	_ Notes = (*LeaseKeeper)(nil)

	_ Rebinder = (*Redis)(nil)
	_ Rebinder = (*Memory)(nil)
	_ Rebinder = (*Resilient)(nil)
	_ Rebinder = (*Leased)(nil)
	_ Rebinder = (*LeaseKeeper)(nil)
)
