package gate

import (
	"context"
	"strings"
	"testing"
)

// TestCompressedRequestBodyIs415: a request body in a content coding is
// refused at its headers, in the dialect's error shape, with nothing
// reserved.
func TestCompressedRequestBodyIs415(t *testing.T) {
	for _, path := range []string{pathMessages, pathChat} {
		for _, coding := range []string{"gzip", "br", "zstd", "deflate", "x-unknown-coding-" + strings.Repeat("y", 60)} {
			h := newHarness(t, baseYAML)
			x, hv := h.g.Begin(context.Background(), Request{Headers: post(path, tenantHeader("acme"), Header{"content-encoding", coding})})
			r := hv.Reply
			if r == nil || r.Status != 415 {
				t.Fatalf("%s %s: %+v", path, coding, hv)
			}
			checkReplyFraming(t, r)
			if ae, _ := header(r.Headers, "accept-encoding"); ae != "identity" {
				t.Errorf("accept-encoding %q", ae)
			}
			typ, _, msg := errorType(t, r.Body)
			if typ != "invalid_request_error" || !strings.Contains(msg, "must not be compressed") || len(msg) > 160 {
				t.Errorf("%s: %s %q", path, typ, msg)
			}
			if o := h.obs.lastOutcome(t); o.Result != ResultInvalidRequest || o.Metered {
				t.Errorf("outcome %+v", o)
			}
			if !x.Done() {
				t.Error("a refused request is done")
			}
			h.wantBudgets("acme", "", 0, 0)
		}
	}
	// identity is no compression.
	h := newHarness(t, baseYAML)
	for _, ce := range []string{"identity", ""} {
		if _, hv := h.g.Begin(context.Background(), Request{Headers: post(pathChat, tenantHeader("acme"), Header{"content-encoding", ce})}); hv.Reply != nil {
			t.Errorf("content-encoding %q refused: %d", ce, hv.Reply.Status)
		}
	}
}
