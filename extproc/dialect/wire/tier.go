package wire

// MaxServiceTierLength bounds a service tier kept from a response. The
// tiers providers report are short words ("default", "flex", "priority",
// "standard", "batch"); a longer value is no tier the price table knows,
// and keeping it would let a hostile upstream make tokenwarden copy a large
// string on every chunk.
const MaxServiceTierLength = 64

// ServiceTier returns the service tier v names — the decoded text of a
// non-empty JSON string of at most MaxServiceTierLength bytes — or cur when
// v names none (absent, null, another type, empty, too long), so that the
// last tier a response reports wins and a chunk without one keeps it. The
// text is copied only when it differs from cur: a tier repeated on every
// chunk of a stream (OpenAI's service_tier) costs no allocation.
func ServiceTier(v Value, cur string) string {
	if v.Kind != KindString || len(v.Raw) <= 2 {
		return cur
	}
	var buf [MaxServiceTierLength + 8]byte
	raw := v.Raw[1 : len(v.Raw)-1]
	if len(raw) > 6*MaxServiceTierLength { // escapes are at most 6 bytes per byte decoded
		return cur
	}
	t := appendUnescaped(buf[:0], raw)
	if len(t) == 0 || len(t) > MaxServiceTierLength {
		return cur
	}
	if View(t) == cur {
		return cur
	}
	return string(t)
}
