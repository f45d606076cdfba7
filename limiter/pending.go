package limiter

import (
	"cmp"
	"container/heap"
)

// pendingSet is the memory store's counterpart of the Redis pending zset: the
// request ids of unsettled reservations ordered by (expiry, id), which is
// ZRANGEBYSCORE's order. It counts live leases and finds expired
// reservations in time proportional to the expired ones, not to all.
type pendingSet struct {
	byID map[string]*pendingItem
	h    pendingHeap
}

type pendingItem struct {
	id    string
	exp   int64
	index int
}

func newPendingSet() pendingSet { return pendingSet{byID: map[string]*pendingItem{}} }

func (s *pendingSet) add(id string, exp int64) {
	if it := s.byID[id]; it != nil {
		it.exp = exp
		heap.Fix(&s.h, it.index)
		return
	}
	it := &pendingItem{id: id, exp: exp}
	s.byID[id] = it
	heap.Push(&s.h, it)
}

func (s *pendingSet) remove(id string) {
	if it := s.byID[id]; it != nil {
		heap.Remove(&s.h, it.index)
		delete(s.byID, id)
	}
}

func (s *pendingSet) len() int { return len(s.h) }

// live counts members whose expiry is after now (ZCOUNT (now +inf).
func (s *pendingSet) live(now int64) int64 {
	return int64(len(s.h)) - s.expiredCount(0, now)
}

// expiredCount counts the expired members in the subtree at i; a member that
// is live has no expired descendants, so only expired members and their
// children are visited.
func (s *pendingSet) expiredCount(i int, now int64) int64 {
	if i >= len(s.h) || s.h[i].exp > now {
		return 0
	}
	return 1 + s.expiredCount(2*i+1, now) + s.expiredCount(2*i+2, now)
}

// popExpired removes and returns the first member if it has expired.
func (s *pendingSet) popExpired(now int64) (string, bool) {
	if len(s.h) == 0 || s.h[0].exp > now {
		return "", false
	}
	it := heap.Pop(&s.h).(*pendingItem)
	delete(s.byID, it.id)
	return it.id, true
}

type pendingHeap []*pendingItem

func (h pendingHeap) Len() int { return len(h) }
func (h pendingHeap) Less(i, j int) bool {
	return cmp.Or(cmp.Compare(h[i].exp, h[j].exp), cmp.Compare(h[i].id, h[j].id)) < 0
}
func (h pendingHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *pendingHeap) Push(x any) {
	it := x.(*pendingItem)
	it.index = len(*h)
	*h = append(*h, it)
}
func (h *pendingHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}
