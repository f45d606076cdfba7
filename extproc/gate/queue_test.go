package gate

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
)

// queueYAML: one request at a time; both lanes may wait 5s.
const queueYAML = `
queue: {max_requests: %d, max_bytes: %d}
policies:
  default: {}
  shaped:
    limits: {concurrent: 1}
    budgets: [{window: day, usd: %s}]
    lanes:
      interactive: {priority: 2, share: 0.7, default: true, max_wait: 5s}
      batch: {priority: 1, share: 0.3, max_wait: 5s}
tenants:
  acme: {policy: shaped}
`

func queueHarness(t *testing.T, maxRequests int, maxBytes int64) *harness {
	return newHarness(t, fmt.Sprintf(queueYAML, maxRequests, maxBytes, "50"))
}

// waitFor polls cond (real time: it waits for goroutines, never for the
// fake clock) and fails the test after a while.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// queued is one waiting request and how its wait ended.
type queued struct {
	name string
	x    *Exchange
	done chan BodyVerdict
}

// enqueue starts a request of lane that must wait, and its Wait.
func (h *harness) enqueue(ctx context.Context, name, lane string) *queued {
	h.t.Helper()
	before := h.g.QueueStats().Requests
	x, v := h.laneRequest(ctx, lane)
	if v.Wait == nil {
		h.t.Fatalf("%s: not waiting: %+v", name, v.Reply)
	}
	if got := h.g.QueueStats().Requests; got != before+1 {
		h.t.Fatalf("%s: queue holds %d, want %d", name, got, before+1)
	}
	q := &queued{name: name, x: x, done: make(chan BodyVerdict, 1)}
	go func() { q.done <- x.Wait() }()
	return q
}

// order collects the names of waits that ended admitted, in order.
type order struct {
	mu      sync.Mutex
	names   []string
	running []*Exchange // admitted, holding their slot
}

// finish ends the admitted request that holds the slot.
func (o *order) finish(t *testing.T) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.running) != 1 {
		t.Fatalf("%d requests hold the one slot", len(o.running))
	}
	o.running[0].Abort()
	o.running = nil
}

func (o *order) watch(t *testing.T, qs ...*queued) {
	for _, q := range qs {
		go func() {
			v := <-q.done
			if v.Reply != nil || v.Gone {
				t.Errorf("%s: wait ended %+v", q.name, v)
				return
			}
			o.mu.Lock()
			o.names = append(o.names, q.name)
			o.running = append(o.running, q.x)
			o.mu.Unlock()
		}()
	}
}

func (o *order) got() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.names...)
}

func TestQueueFIFOAndPriority(t *testing.T) {
	h := queueHarness(t, 100, 1<<20)
	first, v := h.laneRequest(context.Background(), "batch")
	if v.Reply != nil || v.Wait != nil {
		t.Fatalf("first request: %+v", v)
	}
	// Batch b1..b3 wait first, then interactive i1 and i2: when the slot
	// frees, interactive goes first, each lane in its own order.
	var qs []*queued
	for _, n := range []string{"b1", "b2", "b3"} {
		qs = append(qs, h.enqueue(context.Background(), n, "batch"))
	}
	for _, n := range []string{"i1", "i2"} {
		qs = append(qs, h.enqueue(context.Background(), n, "interactive"))
	}
	var o order
	o.watch(t, qs...)
	// Nothing polls: the waiters try again only when a slot frees here or
	// their 250ms retry comes, and the fake clock has not moved.
	admits := h.obs.calls("admit")
	time.Sleep(20 * time.Millisecond)
	if got := h.obs.calls("admit"); got != admits {
		t.Errorf("%d admission attempts while nothing changed", got-admits)
	}
	// Each admitted request ends only once the line is idle (every try
	// its admission set off has been decided), so which head the freed
	// slot wakes first is the queue's choice, not the scheduler's.
	first.Abort()
	for k := 1; k <= 5; k++ {
		waitFor(t, fmt.Sprintf("admission %d", k), func() bool { return len(o.got()) == k && h.g.queue.idle() })
		o.finish(t)
	}
	want := []string{"i1", "i2", "b1", "b2", "b3"}
	if got := o.got(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("admitted in order %v, want %v", got, want)
	}
	waitFor(t, "an empty queue", func() bool { return h.g.QueueStats().Requests == 0 })
	if s := h.g.QueueStats(); s.Bytes != 0 || len(s.Lanes) != 3 || s.Lanes[0].Length+s.Lanes[1].Length+s.Lanes[2].Length != 0 {
		t.Errorf("queue after: %+v", s)
	}
}

func TestQueueRetriesWhenCapacityReturns(t *testing.T) {
	// A rate denial waits exactly its retry-after: no attempt before, one
	// at it.
	h := newHarness(t, `
policies:
  default: {}
  shaped:
    limits: {requests_per_minute: 60, burst: 0.02}
    lanes: {only: {priority: 1, share: 1, max_wait: 5s}}
tenants:
  acme: {policy: shaped}
`)
	if _, v := h.laneRequest(context.Background(), ""); v.Reply != nil || v.Wait != nil {
		t.Fatalf("first: %d %s", v.Reply.Status, v.Reply.Body)
	}
	q := h.enqueue(context.Background(), "second", "")
	waitFor(t, "the retry timer", func() bool { return h.clock.pending() == 2 }) // deadline and retry
	admits := h.obs.calls("admit")
	h.clock.Advance(700 * time.Millisecond) // the retry-after is 800ms
	time.Sleep(10 * time.Millisecond)
	if got := h.obs.calls("admit"); got != admits {
		t.Fatalf("%d attempts before the retry-after passed", got-admits)
	}
	h.clock.Advance(200 * time.Millisecond)
	v := <-q.done
	if v.Reply != nil || v.Gone || h.obs.calls("admit") != admits+1 {
		t.Fatalf("after retry-after: %+v, %d attempts", v.Reply, h.obs.calls("admit")-admits)
	}
}

func TestQueueBounds(t *testing.T) {
	t.Run("requests", func(t *testing.T) {
		h := queueHarness(t, 2, 1<<20)
		h.laneRequest(context.Background(), "")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		h.enqueue(ctx, "a", "")
		h.enqueue(ctx, "b", "")
		_, v := h.laneRequest(ctx, "")
		if v.Reply == nil || v.Reply.Status != 429 {
			t.Fatalf("third waiter: %+v", v)
		}
		if d, _ := header(v.Reply.Headers, contract.DeniedHeader); d != "org/concurrency" {
			t.Errorf("overflow answered as %q, want the denial itself", d)
		}
		if got := h.g.QueueStats().Requests; got != 2 {
			t.Errorf("queue holds %d", got)
		}
		if h.lastOverflow() != "interactive/requests" {
			t.Errorf("overflow recorded as %q", h.lastOverflow())
		}
	})
	t.Run("bytes", func(t *testing.T) {
		probe := queueHarness(t, 100, 1<<20)
		probe.laneRequest(context.Background(), "")
		probe.enqueue(context.Background(), "probe", "")
		per := probe.g.QueueStats().Bytes // what one waiting request holds
		if per < int64(len(sonnetBody)) {
			t.Fatalf("a waiting request holds %d bytes, its body is %d", per, len(sonnetBody))
		}
		h := queueHarness(t, 100, 3*per-1) // room for two, not three
		h.laneRequest(context.Background(), "")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		h.enqueue(ctx, "a", "")
		h.enqueue(ctx, "b", "")
		if _, v := h.laneRequest(ctx, ""); v.Reply == nil {
			t.Fatalf("third waiter fits %d bytes", 3*per-1)
		}
		if s := h.g.QueueStats(); s.Requests != 2 || s.Bytes != 2*per {
			t.Errorf("queue: %+v", s)
		}
		if h.lastOverflow() != "interactive/bytes" {
			t.Errorf("overflow recorded as %q", h.lastOverflow())
		}
	})
}

func TestQueueDisconnect(t *testing.T) {
	h := queueHarness(t, 100, 1<<20)
	first, _ := h.laneRequest(context.Background(), "")
	ctx, cancel := context.WithCancel(context.Background())
	gone := h.enqueue(ctx, "gone", "")
	stays := h.enqueue(context.Background(), "stays", "")
	cancel()
	if v := <-gone.done; !v.Gone || v.Reply != nil {
		t.Fatalf("a cancelled wait ended %+v", v)
	}
	if s := h.g.QueueStats(); s.Requests != 1 {
		t.Errorf("queue after a disconnect: %+v", s)
	}
	if got := h.waits(WaitDisconnected); got != 1 {
		t.Errorf("%d disconnected waits recorded", got)
	}
	// The one that left held nothing: the freed slot goes to the next.
	first.Abort()
	if v := <-stays.done; v.Reply != nil || v.Gone {
		t.Fatalf("the remaining waiter: %+v", v)
	}
	gone.x.Abort() // the stream's end: nothing to settle
	if _, v := h.laneRequest(context.Background(), ""); v.Wait == nil {
		t.Errorf("the slot is not held by the admitted waiter: %+v", v)
	}
}

func TestQueueTimeout(t *testing.T) {
	h := queueHarness(t, 100, 1<<20)
	h.laneRequest(context.Background(), "")
	q := h.enqueue(context.Background(), "late", "")
	// Every 250ms it tries again (a slot on another replica could free);
	// at 5s it gives up with the denial it last had.
	for range 19 {
		waitFor(t, "the retry timer", func() bool { return h.clock.pending() == 2 })
		n := h.obs.calls("admit")
		h.clock.Advance(250 * time.Millisecond)
		waitFor(t, "a retry", func() bool { return h.obs.calls("admit") == n+1 })
	}
	waitFor(t, "the retry timer", func() bool { return h.clock.pending() == 2 })
	h.clock.Advance(250 * time.Millisecond)
	v := <-q.done
	if v.Reply == nil || v.Reply.Status != 429 {
		t.Fatalf("after max_wait: %+v", v)
	}
	if d, _ := header(v.Reply.Headers, contract.DeniedHeader); d != "org/concurrency" {
		t.Errorf("denied as %q", d)
	}
	if got := h.waits(WaitTimedOut); got != 1 {
		t.Errorf("%d timed-out waits", got)
	}
	if o := h.obs.lastOutcome(t); o.Result != ResultDenied {
		t.Errorf("outcome %+v", o)
	}
}

func TestQueueBudgetNeverWaits(t *testing.T) {
	h := newHarness(t, fmt.Sprintf(queueYAML, 100, 1<<20, "0.000001"))
	x, v := h.laneRequest(context.Background(), "")
	if v.Wait != nil || v.Reply == nil {
		t.Fatalf("a budget denial waits: %+v", v)
	}
	if d, _ := header(v.Reply.Headers, contract.DeniedHeader); d != "org/budget_day" {
		t.Errorf("denied as %q", d)
	}
	if x.retryIn != 0 || h.g.QueueStats().Requests != 0 {
		t.Errorf("retryIn %s, queue %+v", x.retryIn, h.g.QueueStats())
	}
}

func TestQueueOverrideMessageTimeout(t *testing.T) {
	// Envoy's timer (2s) is shorter than the wait (5s): the verdict asks
	// for the wait and the margin, within max_message_timeout.
	h := queueHarness(t, 100, 1<<20)
	h.laneRequest(context.Background(), "")
	x, v := h.laneRequest(context.Background(), "")
	if v.Wait == nil {
		t.Fatal("not waiting")
	}
	if v.Wait.For != 5*time.Second || v.Wait.Extend != 5500*time.Millisecond {
		t.Errorf("wait %+v, want for 5s, extend 5.5s", *v.Wait)
	}
	x.Leave()
	if h.g.QueueStats().Requests != 0 {
		t.Error("Leave left it queued")
	}
}

// idle reports that no admission attempt of any line runs.
func (q *queue) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, l := range q.lines {
		if l.busy != nil {
			return false
		}
	}
	return true
}

// lastOverflow is the last queue overflow seen, as lane/reason.
func (h *harness) lastOverflow() string {
	h.obs.mu.Lock()
	defer h.obs.mu.Unlock()
	if len(h.obs.overflows) == 0 {
		return ""
	}
	return h.obs.overflows[len(h.obs.overflows)-1]
}

// waits counts the waits that ended with result.
func (h *harness) waits(result string) int {
	h.obs.mu.Lock()
	defer h.obs.mu.Unlock()
	n := 0
	for _, w := range h.obs.waits {
		if w == result {
			n++
		}
	}
	return n
}

// TestQueueWaitsOutACooldown: a request whose upstream is cooling down
// waits for the cool-down's end on a lane that may wait that long, tries
// once then, and goes through; one that would need longer is answered at
// once.
func TestQueueWaitsOutACooldown(t *testing.T) {
	h := queueHarness(t, 100, 1<<20)
	ctx := context.Background()
	// No :authority, no credential: the upstream is the route's ("@").
	if err := h.g.upstreams.Cooldown(ctx, "@", h.clock.Now().Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	q := h.enqueue(ctx, "cooling", "batch")
	waitFor(t, "the retry timer", func() bool { return h.clock.pending() == 2 })
	if n := h.obs.calls("admit"); n != 0 {
		t.Fatalf("%d admissions during the cool-down", n)
	}
	h.clock.Advance(2 * time.Second)
	if v := <-q.done; v.Reply != nil || v.Gone {
		t.Fatalf("after the cool-down: %+v", v)
	}
	if n := h.obs.calls("admit"); n != 1 {
		t.Errorf("%d admissions, want the one after the cool-down", n)
	}

	if err := h.g.upstreams.Cooldown(ctx, "@", h.clock.Now().Add(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	_, v := h.laneRequest(ctx, "batch")
	if v.Wait != nil || v.Reply == nil {
		t.Fatalf("a 20s cool-down on a 5s lane: %+v", v)
	}
	if d, _ := header(v.Reply.Headers, contract.DeniedHeader); d != DeniedUpstreamCooldown {
		t.Errorf("denied as %q", d)
	}
}
