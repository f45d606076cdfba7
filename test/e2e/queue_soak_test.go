package e2e

import (
	"context"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/envoy/sim"
)

// soakBody is about 1 KiB, so the queue's byte bound below holds a known
// number of bodies.
var soakBody = `{"model":"claude-haiku-4-5","max_tokens":32,"messages":[{"role":"user","content":"` +
	strings.Repeat("queue ", 160) + `"}]}`

// TestQueueThousandThroughEnvoyWithDisconnects: 1,000 requests at once
// through envoy/sim to one processor whose policy admits 100 a second, on a
// lane that may wait 9s (Envoy's 2s message timeout extended); the queue
// holds at most 600 bodies' bytes, and a third of the clients go away at a
// random moment. The queue's bytes never pass the bound (sampled all along),
// the rest overflow at once and are counted, every client that stayed gets
// an answer (200, or its 429), and afterwards nothing is left: the queue
// empty in requests and bytes, nothing reserved in the store, the
// process's goroutines back to where they were.
func TestQueueThousandThroughEnvoyWithDisconnects(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 concurrent exchanges")
	}
	maxBytes := 600 * len(soakBody)
	s := newStack(t, stackOptions{config: `
queue: {max_requests: 1000, max_bytes: ` + strconv.Itoa(maxBytes) + `, message_timeout: 2s, max_message_timeout: 10s}
policies:
  default:
    limits: {requests_per_minute: 6000, burst: 0.01}
    budgets: [{window: day, usd: 1000}]
    lanes:
      batch: {priority: 1, share: 1, max_wait: 9s}
tenants:
  soak: {}
`, filter: func(c *sim.Config) { c.MessageTimeout, c.MaxMessageTimeout = 2*time.Second, 10*time.Second }})
	tenant := sim.Header{Name: "x-tenant-id", Value: "soak"}
	// One exchange first, so connections and the processor's long-lived
	// goroutines exist before the baseline is read.
	if x := s.do(context.Background(), 0, anthropicRequest(soakBody, tenant)); x.err != nil || x.resp.Status != 200 {
		t.Fatalf("warm-up: %v %+v", x.err, x.resp)
	}
	time.Sleep(200 * time.Millisecond)
	baseline := processorGoroutines()

	stop := make(chan struct{})
	var peak atomic.Int64
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if b := int64(s.total("tokenwarden_queue_bytes")); b > peak.Load() {
				peak.Store(b)
			}
		}
	}()

	const n = 1000
	var ok, denied, gone, other atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 1000))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			leaves := rng.IntN(3) == 0
			if leaves {
				time.AfterFunc(time.Duration(rng.Int64N(int64(4*time.Second))), cancel)
			}
			r := anthropicRequest(soakBody, tenant)
			r.Attributes = map[string]any{gateway.LaneAttribute: "batch"}
			x := s.do(ctx, 0, r)
			switch {
			case x.err != nil && leaves:
				gone.Add(1)
			case x.err != nil:
				other.Add(1)
				t.Errorf("client %d: %v", i, x.err)
			case x.resp.Status == 200:
				ok.Add(1)
			case x.resp.Status == 429:
				denied.Add(1)
			default:
				other.Add(1)
				t.Errorf("client %d: status %d %s", i, x.resp.Status, x.body)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled

	overflows := s.total("tokenwarden_queue_overflows_total")
	t.Logf("%d requests: %d ok, %d 429 (%v queue overflows), %d left; queue bytes peaked at %d of %d",
		n, ok.Load(), denied.Load(), overflows, gone.Load(), peak.Load(), maxBytes)
	if peak.Load() > int64(maxBytes) {
		t.Errorf("queue bytes reached %d, over the bound %d", peak.Load(), maxBytes)
	}
	if peak.Load() == 0 || overflows == 0 || ok.Load() == 0 || gone.Load() == 0 {
		t.Errorf("the run did not exercise the queue: peak %d bytes, %v overflows, %d ok, %d left", peak.Load(), overflows, ok.Load(), gone.Load())
	}
	if int64(overflows) > denied.Load()+gone.Load() {
		t.Errorf("%v overflows counted, more than the %d requests refused or gone: a request is counted once", overflows, denied.Load()+gone.Load())
	}
	if s.total("tokenwarden_queue_wait_seconds", "lane", "batch", "result", "disconnected") == 0 {
		t.Errorf("no wait ended disconnected: the clients that left were never waiting")
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		q, b := s.total("tokenwarden_queue_requests"), s.total("tokenwarden_queue_bytes")
		reserved := s.budget("soak", "day").Reserved
		g := processorGoroutines()
		if q == 0 && b == 0 && reserved == 0 && g <= baseline+5 {
			t.Logf("afterwards: queue empty, nothing reserved, %d processor goroutines (baseline %d)", g, baseline)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leaked: %v queued, %v queue bytes, %d nano-USD reserved, %d processor goroutines (baseline %d)", q, b, reserved, g, baseline)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// processorGoroutines counts the goroutines running tokenwarden's
// processor code (extproc, its gate, the limiter): the test's own clients,
// the sim and the mock's idle keep-alive connections are not the
// processor's, and would hide a leak in it. Nor are the stream helpers
// parked between calls (extproc's helperPool keeps up to 64 by design, each
// waiting for a call and holding no stream); one still in a call is
// counted.
func processorGoroutines() int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "extproc.(*helperPool).helper") && !strings.Contains(g, "extproc.(*stream).runCall") {
			continue
		}
		if strings.Contains(g, "tokenwarden/tokenwarden/extproc") || strings.Contains(g, "tokenwarden/tokenwarden/limiter") {
			n++
		}
	}
	return n
}
