package limiter

import "hash/maphash"

// endedSet remembers the reservations that ended (settled, expired,
// cancelled, and cancel tombstones) for as long as they answer duplicates:
// settledTTL, an hour by default. At thousands of exchanges a second that
// is millions of entries, the bulk of the memory store's heap; kept as
// map[string]*memRecord they were most of what the GC marked on every cycle
// (a heap profile of the small-JSON load: Memory.admit held 62% of the live
// heap, and the GC's mark workers 22% of the processor's CPU). Here an entry
// is two words of key and two of value with no pointer in either, so the
// GC never scans the maps, and expiry drops a whole generation at once
// instead of a pass over every entry under the store's mutex.
//
// The key is the request id's 128-bit hash under two per-process seeds;
// two ids collide with probability about n²/2¹²⁹ (below 10⁻²⁴ for a
// hundred million entries), and a collision could only mistake a new id
// for a duplicate.
type endedSet struct {
	span      int64 // µs; every entry's TTL is at most this
	cur, prev endedGen
}

// endedGen is one generation: the entries added since start.
type endedGen struct {
	start   int64
	entries map[endedKey]endedEntry
}

type endedKey [2]uint64

type endedEntry struct {
	deadline int64
	state    byte // 's' settled, 'x' expired, 'c' cancelled or a tombstone
}

var endedSeeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}

func endedKeyOf(id string) endedKey {
	return endedKey{maphash.String(endedSeeds[0], id), maphash.String(endedSeeds[1], id)}
}

// age retires generations as time passes. Every call to add ages the set
// first, so the current generation takes entries only while it is less
// than span old, and each of them has its deadline within span of being
// added: a generation that started at g holds nothing past g+2·span. It
// stops taking entries once span old and is dropped at g+2·span.
func (s *endedSet) age(now int64) {
	if s.cur.entries != nil && now >= s.cur.start+s.span {
		s.prev, s.cur = s.cur, endedGen{}
	}
	if s.prev.entries != nil && now >= s.prev.start+2*s.span {
		s.prev = endedGen{}
	}
}

// add records that id ended in state, answering duplicates until deadline
// (at most span after now).
func (s *endedSet) add(id string, now, deadline int64, state byte) {
	s.age(now)
	if s.cur.entries == nil {
		s.cur = endedGen{start: now, entries: map[endedKey]endedEntry{}}
	}
	s.cur.entries[endedKeyOf(id)] = endedEntry{deadline: deadline, state: state}
}

// state is the state id ended in, or 0 when it did not end or its entry
// has passed its deadline.
func (s *endedSet) state(id string, now int64) byte {
	if s.len() == 0 {
		return 0
	}
	k := endedKeyOf(id)
	e, ok := s.cur.entries[k] // an id that ended again since is in cur
	if !ok {
		e = s.prev.entries[k]
	}
	if e.deadline <= now {
		return 0
	}
	return e.state
}

func (s *endedSet) len() int { return len(s.cur.entries) + len(s.prev.entries) }
