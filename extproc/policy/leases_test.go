package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/limiter"
)

func TestLeasesBlock(t *testing.T) {
	cases := []struct {
		block string
		want  limiter.LeaseTerms
		err   string
	}{
		{"", limiter.LeaseTerms{}, ""},
		{"leases: {max_age: 2s, max_requests: 64}", limiter.LeaseTerms{MaxAge: 2 * time.Second, MaxRequests: 64}, ""},
		{"leases: {max_age: 10s, max_requests: 1000}", limiter.LeaseTerms{MaxAge: 10 * time.Second, MaxRequests: 1000}, ""},
		{"leases: {max_age: 1ms, max_requests: 2}", limiter.LeaseTerms{MaxAge: time.Millisecond, MaxRequests: 2}, ""},
		{"leases: {max_age: 0s, max_requests: 64}", limiter.LeaseTerms{}, "max_age"},
		{"leases: {max_age: 11s, max_requests: 64}", limiter.LeaseTerms{}, "max_age"},
		{"leases: {max_requests: 64}", limiter.LeaseTerms{}, "max_age"},
		{"leases: {max_age: 2s, max_requests: 1}", limiter.LeaseTerms{}, "max_requests"},
		{"leases: {max_age: 2s, max_requests: 1001}", limiter.LeaseTerms{}, "max_requests"},
		{"leases: {max_age: 2s}", limiter.LeaseTerms{}, "max_requests"},
	}
	for _, tc := range cases {
		c, err := Parse([]byte("policies:\n  default:\n    " + tc.block + "\n"))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), "policies.default.leases."+tc.err) {
				t.Errorf("%q: %v, want an error naming %s", tc.block, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", tc.block, err)
		}
		if p, _ := c.Policy("", "default"); p.Leases != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.block, p.Leases, tc.want)
		}
	}
}
