package gate

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// orderedStore records the request ids of the admissions the memory store
// allows, in the order it decides them.
type orderedStore struct {
	*limiter.Memory
	mu      sync.Mutex
	allowed []string
}

func (s *orderedStore) Admit(ctx context.Context, req limiter.AdmitRequest) (limiter.Decision, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, err := s.Memory.Admit(ctx, req)
	if err == nil && d.Allowed {
		s.allowed = append(s.allowed, req.RequestID)
	}
	return d, err
}

// TestQueueThousandWaitersRandomDisconnects: 1,000 requests wait behind one
// slot, on real timers, each on its own goroutine as each stream would be;
// about a third of their clients go away at random moments while the
// queue drains one admission at a time. Checked: every wait ends (admitted
// or disconnected, none timed out or lost); the admissions of each lane
// follow the order the requests entered it; the queue's bytes never exceed
// its bound, and the 1,001st request, past the bound, is answered at once;
// at the end the queue is empty, the store holds no reservation (its
// budget shows nothing reserved, and exactly one request fits the one
// slot), and the goroutines are back to what they were.
func TestQueueThousandWaitersRandomDisconnects(t *testing.T) {
	if testing.Short() {
		t.Skip("a thousand waiters")
	}
	const n = 1000
	baseline := runtime.NumGoroutine()
	body := sonnetBody
	cfgYAML := testIdentity + fmt.Sprintf(`
queue: {max_requests: 5000, max_bytes: %d}
policies:
  default: {}
  shaped:
    limits: {concurrent: 1}
    budgets: [{window: day, usd: 1000}]
    lanes:
      interactive: {priority: 2, share: 0.5, default: true, max_wait: 9s}
      batch: {priority: 1, share: 0.5, max_wait: 9s}
tenants:
  acme: {policy: shaped}
`, n*len(body)) // room for n bodies exactly (none is rewritten)
	cfg, err := policy.Parse([]byte(cfgYAML))
	if err != nil {
		t.Fatal(err)
	}
	store := &orderedStore{Memory: limiter.NewMemory(limiter.MemoryOptions{})}
	obs := &recorder{}
	g, err := New(Options{Config: policy.NewHolder(cfg), Store: store, Observer: obs, Logger: slog.New(&logRecorder{})})
	if err != nil {
		t.Fatal(err)
	}
	begin := func(ctx context.Context, lane string) (*Exchange, BodyVerdict) {
		x, hv := g.Begin(ctx, Request{Headers: post(pathMessages, tenantHeader("acme")), RouteLane: lane})
		if hv.Reply != nil || hv.PassThrough {
			t.Fatalf("Begin: %+v", hv)
		}
		return x, x.Body([]byte(body))
	}
	blocker, v := begin(context.Background(), "")
	if v.Reply != nil || v.Wait != nil {
		t.Fatalf("the first request: %+v", v)
	}

	// The bound, sampled all along.
	var maxBytes atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if b := g.QueueStats().Bytes; b > maxBytes.Load() {
				maxBytes.Store(b)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()

	type waiting struct {
		lane   string
		id     string
		cancel context.CancelFunc
		result BodyVerdict
	}
	ws := make([]*waiting, n)
	var wg sync.WaitGroup
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range ws {
		lane := "interactive"
		if rng.IntN(2) == 0 {
			lane = "batch"
		}
		ctx, cancel := context.WithCancel(context.Background())
		x, v := begin(ctx, lane)
		if v.Wait == nil {
			t.Fatalf("request %d: not waiting: %+v", i, v.Reply)
		}
		w := &waiting{lane: lane, id: x.requestID, cancel: cancel}
		ws[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.result = x.Wait()
			// The stream's end: an admitted request ends at once and gives
			// its slot back; any other has nothing to settle.
			x.Abort()
		}()
	}
	if s := g.QueueStats(); s.Requests != n || s.Bytes != int64(n*len(body)) {
		t.Fatalf("queue with %d waiting: %+v", n, s)
	}
	// Past the bound in bytes: answered at once, and counted.
	over, v := begin(context.Background(), "batch")
	if v.Reply == nil || v.Reply.Status != 429 {
		t.Fatalf("request %d past the byte bound: %+v", n+1, v)
	}
	over.Abort()

	// Clients go away at random moments while the queue drains.
	gone := map[int]bool{}
	for _, i := range rng.Perm(n)[:n/3] {
		gone[i] = true
	}
	var cancels sync.WaitGroup
	cancels.Add(1)
	go func() {
		defer cancels.Done()
		for i := range n {
			if gone[i] {
				ws[i].cancel()
				if rng.IntN(4) == 0 {
					time.Sleep(50 * time.Microsecond)
				}
			}
		}
	}()
	blocker.Abort()
	wg.Wait()
	cancels.Wait()
	close(stopSampling)
	<-sampled

	if m := maxBytes.Load(); m > int64(n*len(body)) {
		t.Errorf("the queue held %d bytes, above its bound %d", m, n*len(body))
	}
	admitted := 0
	for i, w := range ws {
		switch {
		case w.result.Gone:
			if !gone[i] {
				t.Errorf("request %d: gone, but its client stayed", i)
			}
		case w.result.Reply != nil:
			t.Errorf("request %d: answered %d %s", i, w.result.Reply.Status, w.result.Reply.Body)
		default:
			admitted++
		}
		w.cancel()
	}
	t.Logf("%d waiters: %d admitted, %d left; queue bytes peaked at %d of %d; baseline %d goroutines", n, admitted, n-admitted, maxBytes.Load(), n*len(body), baseline)
	if admitted < n-len(gone) {
		t.Errorf("%d admitted, want at least the %d that stayed", admitted, n-len(gone))
	}
	// FIFO within each lane: the store allowed each lane's requests in the
	// order they entered it.
	pos := map[string]int{}
	for i, id := range store.allowed {
		pos[id] = i
	}
	for _, lane := range []string{"interactive", "batch"} {
		last := -1
		for i, w := range ws {
			p, ok := pos[w.id]
			if w.lane != lane || !ok {
				continue
			}
			if p < last {
				t.Errorf("lane %s: request %d admitted before an earlier one", lane, i)
			}
			last = p
		}
	}
	if s := g.QueueStats(); s.Requests != 0 || s.Bytes != 0 {
		t.Errorf("queue after: %+v", s)
	}
	if d, err := store.Memory.Budgets(context.Background(), "acme", mustPolicy(t, cfg).LimiterBudgets(time.Now())); err != nil || d[0].Reserved != 0 {
		t.Errorf("reserved after every request ended: %+v %v", d, err)
	}
	// Exactly one slot is free: one request fits, the next does not.
	one, v := begin(context.Background(), "")
	if v.Reply != nil || v.Wait != nil {
		t.Errorf("after: the free slot is taken: %+v", v)
	}
	// With the queue empty, a wait means a denial: the slot is taken.
	second, v := begin(context.Background(), "")
	if v.Wait == nil {
		t.Errorf("after: a second request fits one slot: %+v", v)
	}
	second.Leave()
	one.Abort()
	waitFor(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= baseline })
	if w := waitsBy(obs); w[WaitDisconnected]+w[WaitAdmitted] != n+1 || w[WaitTimedOut] != 0 { // n and the one that left
		t.Errorf("waits recorded: %v", w)
	}
	if !slices.Contains(obs.overflows, "batch/bytes") {
		t.Errorf("overflows recorded: %v", obs.overflows)
	}
}

func mustPolicy(t *testing.T, cfg *policy.Config) *policy.Policy {
	p, _ := cfg.Policy("acme", "")
	return p
}

func waitsBy(r *recorder) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for _, w := range r.waits {
		out[w]++
	}
	return out
}
