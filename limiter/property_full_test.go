package limiter

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// The property of a full budget reservation (AdmitRequest.Output): whatever
// the concurrency, the requested outputs and the levels, when each request
// produces at most the output the store granted it (the provider honours the
// clamped limit) and no more input than estimated, no level of the org ever
// settles above its cap.

// fullWorkload is one random run: an org with teams and users, their caps,
// and the requests they send.
type fullWorkload struct {
	seed        uint64
	concurrency int
	caps        map[string]int64 // by store budget name
	requests    []fullRequest
}

type fullRequest struct {
	team, user string
	input      int64 // tokens, estimated; the provider uses at most this
	output     int64 // the request's max_tokens
	inPrice    int64 // nano-USD per token
	outPrice   int64
	min        int64
	used       float64 // the fraction of the granted output the provider produces
}

func newFullWorkload(seed uint64) fullWorkload {
	r := rand.New(rand.NewPCG(seed, 13))
	w := fullWorkload{seed: seed, concurrency: 1 + r.IntN(64), caps: map[string]int64{}}
	// One request costs up to about $1.6 (64000 × 25000 nano-USD): caps
	// between a few requests' worth and dozens, at every level.
	w.caps["day"] = 1e9 + r.Int64N(20e9)
	teams := []string{"search", "ads", "infra"}[:1+r.IntN(3)]
	users := map[string][]string{}
	for _, tm := range teams {
		w.caps[LevelBudgetName("t:"+tm, "day")] = 1e8 + r.Int64N(w.caps["day"])
		for u := range 1 + r.IntN(4) {
			name := fmt.Sprintf("u%d", u)
			users[tm] = append(users[tm], name)
			w.caps[LevelBudgetName("u:"+tm+"/"+name, "day")] = 5e7 + r.Int64N(w.caps["day"]/2)
		}
	}
	n := 50 + r.IntN(250)
	for range n {
		tm := teams[r.IntN(len(teams))]
		q := fullRequest{
			team: tm, user: users[tm][r.IntN(len(users[tm]))],
			input:    r.Int64N(20_000),
			output:   1 + r.Int64N(64_000),
			inPrice:  []int64{250, 1000, 3000, 5000}[r.IntN(4)],
			outPrice: []int64{1250, 4000, 15000, 25000}[r.IntN(4)],
			used:     r.Float64(),
		}
		if r.IntN(8) == 0 {
			q.used = 1 // every granted token
		}
		q.min = min(1+r.Int64N(1024), q.output)
		w.requests = append(w.requests, q)
	}
	return w
}

func (w *fullWorkload) budgets(h harness, t *testing.T, q fullRequest) []Budget {
	now := h.now(t)
	org := dayBudget("day", now, w.caps["day"])
	team := dayBudget("day", now, w.caps[LevelBudgetName("t:"+q.team, "day")])
	user := dayBudget("day", now, w.caps[LevelBudgetName("u:"+q.team+"/"+q.user, "day")])
	return LevelBudgets([]Level{
		{Key: "", Budgets: []Budget{org}},
		{Key: "t:" + q.team, Budgets: []Budget{team}},
		{Key: "u:" + q.team + "/" + q.user, Budgets: []Budget{user}},
	})
}

// run sends every request (admit, then settle what the provider produced)
// from w.concurrency goroutines and checks every level against its cap.
func (w *fullWorkload) run(t *testing.T, h harness) (clamped, denied int) {
	org := newTenant(fmt.Sprintf("full-%d", w.seed))
	work := make(chan int)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range w.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				q := w.requests[i]
				bs := w.budgets(h, t, q)
				req := AdmitRequest{Tenant: org, RequestID: fmt.Sprint(i), Budgets: bs,
					Tokens: q.input + q.output, Cost: q.input*q.inPrice + q.output*q.outPrice,
					Output: Output{Tokens: q.output, Price: q.outPrice, Min: q.min}}
				d, err := h.store.Admit(ctxb, req)
				if err != nil {
					t.Errorf("admit %d: %v", i, err)
					continue
				}
				mu.Lock()
				if !d.Allowed {
					denied++
				} else if d.OutputTokens < q.output {
					clamped++
				}
				mu.Unlock()
				if !d.Allowed {
					continue
				}
				if d.OutputTokens < q.min || d.OutputTokens > q.output {
					t.Errorf("request %d granted %d output tokens outside [%d, %d]", i, d.OutputTokens, q.min, q.output)
				}
				out := int64(q.used * float64(d.OutputTokens))
				settle := SettleRequest{Tenant: org, RequestID: req.RequestID, Budgets: bs,
					Tokens: q.input + out, Cost: q.input*q.inPrice + out*q.outPrice}
				if _, err := h.replica.Settle(ctxb, settle); err != nil {
					t.Errorf("settle %d: %v", i, err)
				}
			}
		}()
	}
	for i := range w.requests {
		work <- i
	}
	close(work)
	wg.Wait()

	var all []Budget
	seen := map[string]bool{}
	for _, q := range w.requests {
		for _, b := range w.budgets(h, t, q) {
			if !seen[b.Name] {
				seen[b.Name] = true
				all = append(all, b)
			}
		}
	}
	states, err := h.store.Budgets(ctxb, org, all)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range states {
		if s.Spent > s.Cap || s.Reserved != 0 {
			t.Errorf("seed %d: %s spent %d of cap %d (reserved %d)", w.seed, s.Name, s.Spent, s.Cap, s.Reserved)
		}
	}
	return clamped, denied
}

func runFullProperty(t *testing.T, h harness, seeds int) {
	var clamped, denied int
	for seed := range uint64(seeds) {
		w := newFullWorkload(seed)
		c, d := w.run(t, h)
		clamped += c
		denied += d
	}
	t.Logf("%d runs: %d requests clamped, %d denied", seeds, clamped, denied)
	// The caps are small enough that the property is exercised: some
	// requests were clamped and some refused.
	if clamped == 0 || denied == 0 {
		t.Fatalf("%d clamped and %d denied: the workloads never reached a cap", clamped, denied)
	}
}

func TestFullReservationPropertyMemory(t *testing.T) {
	m := NewMemory(MemoryOptions{})
	runFullProperty(t, harness{store: m, replica: m, now: func(*testing.T) time.Time { return time.Now() }}, 40)
}

func TestFullReservationPropertyRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	h := redisHarness(newClient(t, srv.Addr()), newClient(t, srv.Addr()))
	seeds := 12
	if testing.Short() {
		seeds = 3
	}
	runFullProperty(t, h, seeds)
}
