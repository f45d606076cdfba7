package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// lanesConfig: one policy, two lanes chosen by route metadata. 20 requests
// a minute: batch's group may use 6 of them (30%), interactive the rest
// and whatever batch leaves.
const lanesConfig = `
policies:
  default: {}
  tools:
    limits: {requests_per_minute: 20}
    lanes:
      interactive: {priority: 2, share: 0.7, default: true}
      batch: {priority: 1, share: 0.3}
tenants:
  laned: {policy: tools}
`

// TestLaneSharesAcrossReplicas: two replicas on one Redis; batch requests
// on both saturate batch's share, and interactive requests are still
// admitted up to the rest of the limit — the lane groups are shared state
// like any limit.
func TestLaneSharesAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := newStack(t, stackOptions{config: lanesConfig, processors: 2, redis: srv.Addr()})
	tenant := sim.Header{Name: "x-tenant-id", Value: "laned"}
	send := func(i int, lane string) exchange {
		r := anthropicRequest(cooldownBody, tenant)
		r.Attributes = map[string]any{gateway.PolicyAttribute: "tools", gateway.LaneAttribute: lane}
		return s.do(context.Background(), i, r)
	}
	count := func(lane string, n int) (ok, denied int) {
		for i := range n {
			switch x := send(i, lane); {
			case x.err == nil && x.resp.Status == 200:
				ok++
			case x.err == nil && x.resp.Status == 429 && x.resp.LocalReply:
				denied++
			default:
				t.Fatalf("%s request %d: %v %+v", lane, i, x.err, x.resp)
			}
		}
		return ok, denied
	}
	start := time.Now()
	batchOK, batchDenied := count("batch", 10)
	interOK, interDenied := count("interactive", 20)
	// The limits refill as the test runs: the whole limit by one request
	// every 3s, batch's share every 10s. Allow for exactly that.
	refill := int(time.Since(start) / (3 * time.Second))
	if batchOK < 6 || batchOK > 6+refill/3 || batchOK+batchDenied != 10 {
		t.Errorf("batch: %d admitted, %d denied; want its share, 6 (refill %d)", batchOK, batchDenied, refill)
	}
	if interOK < 20-batchOK || interOK > 20-batchOK+refill || interDenied == 0 {
		t.Errorf("interactive: %d admitted, %d denied beside %d batch; want the rest of 20 (refill %d)", interOK, interDenied, batchOK, refill)
	}
}
