package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/envoy/sim"
)

// queueConfig: one request per second (a GCRA tolerance of 1.2s holds
// one, and the next conforms 0.8s later); the route's lane may wait 3s.
// Envoy's message_timeout is 200ms, so the wait must extend it first.
const queueConfig = `
queue: {message_timeout: 200ms, max_message_timeout: 10s}
policies:
  default:
    limits: {requests_per_minute: 60, burst: 0.02}
    lanes:
      batch: {priority: 1, share: 1, max_wait: 3s}
tenants:
  waits: {}
`

// TestQueueWaitExtendsEnvoysMessageTimeout: through envoy/sim with
// message_timeout 200ms, a request whose capacity returns in about 0.8s
// waits for it: the processor first sends override_message_timeout (the
// sim records it before the body's answer, and does not take it for the
// answer), and the request then completes 200 — instead of the 504 Envoy
// gives at 200ms, or a 429.
func TestQueueWaitExtendsEnvoysMessageTimeout(t *testing.T) {
	s := newStack(t, stackOptions{config: queueConfig, filter: func(c *sim.Config) {
		c.MessageTimeout, c.MaxMessageTimeout = 200*time.Millisecond, 10*time.Second
	}})
	tenant := sim.Header{Name: "x-tenant-id", Value: "waits"}
	batch := func() *sim.Request {
		r := anthropicRequest(cooldownBody, tenant)
		r.Attributes = map[string]any{gateway.LaneAttribute: "batch"}
		return r
	}
	ctx := context.Background()
	if x := s.do(ctx, 0, batch()); x.err != nil || x.resp.Status != 200 {
		t.Fatalf("first request: %v %+v %s", x.err, x.resp, x.body)
	}
	start := time.Now()
	x := s.do(ctx, 0, batch())
	waited := time.Since(start)
	if x.err != nil || x.resp.Status != 200 || x.resp.LocalReply {
		t.Fatalf("the waiting request: %v %+v %s", x.err, x.resp, x.body)
	}
	var override, answered, timeouts int
	for _, e := range x.resp.Trace() {
		switch {
		case e.Kind == sim.EventTimeoutOverride:
			if answered > 0 {
				t.Errorf("override_message_timeout after the body's answer")
			}
			override++
		case e.Kind == sim.EventRecv && e.Response.GetRequestBody() != nil:
			answered++
		case e.Kind == sim.EventTimeout:
			timeouts++
		}
	}
	if override != 1 || answered != 1 || timeouts != 0 {
		t.Errorf("trace: %d overrides, %d body answers, %d timeouts; want 1, 1, 0", override, answered, timeouts)
	}
	t.Logf("waited %s behind a 200ms message timeout; trace: %d override, %d body answer", waited, override, answered)
	// It waited for capacity (longer than Envoy's 200ms), not the 3s max.
	if waited < 400*time.Millisecond || waited > 2500*time.Millisecond {
		t.Errorf("waited %s; capacity returned after about 0.8s", waited)
	}
	if got := s.total("tokenwarden_queue_wait_seconds", "lane", "batch", "result", "admitted"); got != 1 {
		t.Errorf("admitted waits counted %v, want 1", got)
	}

}
