package policy

import (
	"strings"
	"testing"
	"time"
)

func TestBatchesBlock(t *testing.T) {
	cases := []struct {
		block string
		want  Batches
		err   string
	}{
		{"", Batches{Allow: true, ReservationTTL: DefaultBatchReservationTTL, MaxRequests: DefaultBatchMaxRequests, FileTTL: DefaultBatchFileTTL, MaxFileBytes: DefaultBatchMaxFileBytes}, ""},
		{"batches: {allow: false, reservation_ttl: 30h, max_requests: 10, file_ttl: 2h, max_file_bytes: 1024}", Batches{ReservationTTL: 30 * time.Hour, MaxRequests: 10, FileTTL: 2 * time.Hour, MaxFileBytes: 1024}, ""},
		{"batches: {max_file_bytes: 67108865}", Batches{}, "max_file_bytes"},
		{"batches: {file_ttl: 500ms}", Batches{}, "file_ttl"},
		{"batches: {file_ttl: 9601h}", Batches{}, "file_ttl"},
		{"batches: {max_requests: 0}", Batches{}, "max_requests"},
		{"batches: {reservation_ttl: 0s}", Batches{}, "reservation_ttl"},
	}
	for _, tc := range cases {
		c, err := Parse([]byte("policies:\n  default:\n    " + tc.block + "\n"))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), "policies.default.batches."+tc.err) {
				t.Errorf("%q: %v, want an error naming %s", tc.block, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", tc.block, err)
		}
		if p, _ := c.Policy("", "default"); p.Batches != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.block, p.Batches, tc.want)
		}
	}
}
