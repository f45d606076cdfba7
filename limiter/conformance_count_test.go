package limiter

import (
	"errors"
	"fmt"
	"testing"
)

// runCountConformance: an admission with Count k moves requests per minute
// at every level (the org, a level's own, a lane group) exactly as k single
// admissions do, and is denied whole, writing nothing, when k does not fit.
func runCountConformance(t *testing.T, h harness) {
	levels := func() []LevelLimits {
		return []LevelLimits{{Key: "t:eng", RequestsPerMinute: 11}, {Key: "u:eng/ann", RequestsPerMinute: 7},
			{Key: "u:eng/ann~lane:batch", RequestsPerMinute: 9}}
	}
	t.Run("CountMovesRequestsLikeSingles", func(t *testing.T) {
		// 7 and 11 do not divide a minute in µs: k singles floor k times, and
		// so must one Count=k admission.
		single, counted := newTenant("count-1"), newTenant("count-k")
		lim := Limits{RequestsPerMinute: 13}
		for i := range 3 {
			if d := mustAdmit(t, h.store, AdmitRequest{Tenant: single, RequestID: fmt.Sprint("s", i), Limits: lim, LevelLimits: levels()}); !d.Allowed {
				t.Fatalf("single %d: %+v", i, d)
			}
		}
		d := mustAdmit(t, h.store, AdmitRequest{Tenant: counted, RequestID: "k", Count: 3, Limits: lim, LevelLimits: levels()})
		if !d.Allowed {
			t.Fatalf("count 3: %+v", d)
		}
		// The most constraining level is the user's 7: 4 left on both.
		if d.Requests.Limit != 7 || d.Requests.Remaining != 4 {
			t.Fatalf("count 3: requests %+v, want limit 7 remaining 4", d.Requests)
		}
		for _, tenant := range []string{single, counted} {
			// 4 more fit the user's 7 exactly, the 5th does not: the same
			// for both tenants (a Count=4, then a single).
			if d := mustAdmit(t, h.replica, AdmitRequest{Tenant: tenant, RequestID: "four", Count: 4, Limits: lim, LevelLimits: levels()}); !d.Allowed || d.Requests.Remaining != 0 {
				t.Fatalf("%s: count 4 after 3: %+v", tenant, d)
			}
			d := mustAdmit(t, h.replica, AdmitRequest{Tenant: tenant, RequestID: "one", Limits: lim, LevelLimits: levels()})
			if d.Allowed || d.Denied != DimensionRequests || d.Level != "u:eng/ann" {
				t.Fatalf("%s: the 8th: %+v; want requests denied at u:eng/ann", tenant, d)
			}
		}
	})
	t.Run("CountThatDoesNotFitIsDeniedWhole", func(t *testing.T) {
		org := newTenant("count-deny")
		lim := Limits{RequestsPerMinute: 10}
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "a", Count: 5, Limits: lim, LevelLimits: levels()}); !d.Allowed {
			t.Fatalf("count 5: %+v", d)
		}
		before := h.dump(t, org)
		// The user's 7 has 2 left: 3 do not fit, at the user's level.
		d := mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "b", Count: 3, Limits: lim, LevelLimits: levels()})
		if d.Allowed || d.Denied != DimensionRequests || d.Level != "u:eng/ann" || d.RetryAfter <= 0 || d.NeverFits {
			t.Fatalf("count 3 with 2 left: %+v", d)
		}
		if after := h.dump(t, org); after != before {
			t.Fatalf("a denied count wrote state:\nbefore %s\nafter  %s", before, after)
		}
		// The org's own 10 with 5 used: 6 do not fit there either.
		d = mustAdmit(t, h.replica, AdmitRequest{Tenant: org, RequestID: "c", Count: 6, Limits: lim})
		if d.Allowed || d.Denied != DimensionRequests || d.Level != "" {
			t.Fatalf("count 6 at the org with 5 left: %+v", d)
		}
		// More than the whole tolerance never fits.
		d = mustAdmit(t, h.replica, AdmitRequest{Tenant: newTenant("count-never"), RequestID: "n", Count: 11, Limits: lim})
		if d.Allowed || d.Denied != DimensionRequests || !d.NeverFits {
			t.Fatalf("count 11 over a limit of 10: %+v; want never fits", d)
		}
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: org, RequestID: "d", Count: 2, Limits: lim, LevelLimits: levels()}); !d.Allowed || d.Requests.Remaining != 0 {
			t.Fatalf("count 2 with 2 left: %+v", d)
		}
	})
	t.Run("CountBounds", func(t *testing.T) {
		for _, c := range []int64{-1, MaxCount + 1} {
			_, err := h.store.Admit(ctxb, AdmitRequest{Tenant: newTenant("count-bad"), RequestID: "x", Count: c})
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("count %d: err %v, want ErrInvalid", c, err)
			}
		}
		if d := mustAdmit(t, h.store, AdmitRequest{Tenant: newTenant("count-max"), RequestID: "x", Count: MaxCount}); !d.Allowed {
			t.Fatalf("count %d unlimited: %+v", MaxCount, d)
		}
	})
}
