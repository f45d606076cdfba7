package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// addServe makes a `tokenwarden serve` process the stack's next replica,
// for what must go through serve's own store stack (limiter.Open) rather
// than the raw stores the in-process replicas are given. Its metrics are
// not in the stack's totals.
func (s *stack) addServe(t *testing.T, p *serveProc) int {
	s.procs = append(s.procs, &proc{reg: prometheus.NewRegistry(), filter: p.filter(t), stopped: true})
	return len(s.procs) - 1
}

// TestServeKeepsBatchNotesAndRebinds: through a real `tokenwarden serve`
// on Redis, an OpenAI batch file uploaded through it can be named by a
// batch (its note is kept: the batch is admitted, not refused as an
// unknown file), and an Anthropic batch's reservation is renamed after the
// provider's id, so downloading its results settles it instead of leaving
// it to be charged at its estimate. serve's store is limiter.Open's stack,
// whose top layer must pass the optional interfaces through.
func TestServeKeepsBatchNotesAndRebinds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts processes")
	}
	rs := redistest.Start(t, redistest.Options{})
	cfg := fmt.Sprintf("store: {redis: \"redis://%s/0\", timeout: 500ms}\n%s", rs.Addr(), batchSettleConfig)
	s := newStack(t, stackOptions{config: cfg, redis: rs.Addr()}) // replica 0 reads the budgets
	sv := s.addServe(t, startServe(t, cfg))
	ctx := context.Background()

	b := oaiBatch{t, s}
	id := b.submitOK(sv, "acme", b.uploadOK(sv, 2, "acme"))
	if !strings.HasPrefix(id, "batch_") {
		t.Fatalf("batch id %q", id)
	}
	if r := s.budget("acme", "day").Reserved; r == 0 {
		t.Fatal("the OpenAI batch reserved nothing")
	}

	// The Anthropic batch is settled when its results are downloaded,
	// under the id the provider gave it.
	org := "globex"
	submit := batchRequest(3, org)
	submit.Headers = append(submit.Headers, sim.Header{Name: "x-mock-batch", Value: "end"})
	x := s.do(ctx, sv, submit)
	var created struct{ ID string }
	if x.err != nil || x.resp.Status != 200 || json.Unmarshal(x.body, &created) != nil || created.ID == "" {
		t.Fatalf("submit: %v %+v %s", x.err, x.resp, x.body)
	}
	if s.budget(org, "day").Reserved == 0 {
		t.Fatal("the Anthropic batch reserved nothing")
	}
	req := anthropicRequest("", tenantH(org))
	req.Method, req.Path, req.Body = "GET", "/v1/messages/batches/"+created.ID+"/results", nil
	if x := s.do(ctx, sv, req); x.err != nil || x.resp.Status != 200 {
		t.Fatalf("download: %v %+v %s", x.err, x.resp, x.body)
	}
	waitFor(t, func() bool { return s.budget(org, "day").Reserved == 0 })
	if st := s.budget(org, "day"); st.Spent == 0 {
		t.Fatalf("the download settled nothing: %+v", st)
	}
}
