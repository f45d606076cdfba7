package policy

import (
	"fmt"

	"github.com/tokenwarden/tokenwarden/limiter"
)

// compileLeases reads a policy's leases: block. Absent, admission is exact;
// present, both fields are required, so that the trade (capacity held for
// max_age in blocks of up to max_requests: limiter.Leased) is always an
// explicit choice.
func compileLeases(at string, f *leasesFile) (limiter.LeaseTerms, error) {
	if f == nil {
		return limiter.LeaseTerms{}, nil
	}
	var t limiter.LeaseTerms
	if !f.MaxAge.set || f.MaxAge.Duration <= 0 || f.MaxAge.Duration > limiter.MaxLeaseAge {
		return t, fmt.Errorf("%s.max_age: %s outside (0, %s]", at, f.MaxAge.Duration, limiter.MaxLeaseAge)
	}
	if f.MaxRequests == nil || *f.MaxRequests < 2 || *f.MaxRequests > limiter.MaxLeaseRequests {
		n := int64(0)
		if f.MaxRequests != nil {
			n = *f.MaxRequests
		}
		return t, fmt.Errorf("%s.max_requests: %d outside 2..%d", at, n, limiter.MaxLeaseRequests)
	}
	t.MaxAge, t.MaxRequests = f.MaxAge.Duration, *f.MaxRequests
	return t, nil
}
