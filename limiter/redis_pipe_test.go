package limiter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// pipelineCounter counts the pipelines of more than one command a client
// sent, and the commands in them.
type pipelineCounter struct{ pipelines, cmds atomic.Int64 }

func (h *pipelineCounter) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 1 {
			h.pipelines.Add(1)
			h.cmds.Add(int64(len(cmds)))
		}
		return next(ctx, cmds)
	}
}

// Calls beyond the lanes in flight go together as pipelines, and each is
// still decided on its own, exactly: of 300 concurrent admissions for one
// tenant with 40 concurrent slots, 40 are admitted, every one is answered
// once, and each settles — also when Redis has forgotten the script, which
// a pipeline answers with NOSCRIPT for every call in it.
func TestRedisPipelinesCoalesceExactly(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	pc := &pipelineCounter{}
	c.AddHook(pc)
	s, err := NewRedis(RedisOptions{Client: c, Timeout: testTimeout, Pipelines: 1, MaxInFlight: 512, QueueTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	now, _ := c.Time(ctxb).Result()
	bs := []Budget{dayBudget("day", now, 1<<40), dayBudget("month", now, 1<<40)}
	lim := Limits{RequestsPerMinute: 1 << 20, Concurrent: 40}
	if err := c.ScriptFlush(ctxb).Err(); err != nil {
		t.Fatal(err)
	}
	const n = 300
	var admitted atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			d, err := s.Admit(ctxb, AdmitRequest{Tenant: "pipe", RequestID: fmt.Sprint(i), Limits: lim, Tokens: 10, Cost: 100, Budgets: bs})
			switch {
			case err != nil:
				errs <- err
			case d.Allowed:
				admitted.Add(1)
			case d.Denied != DimensionConcurrency:
				errs <- fmt.Errorf("admit %d denied for %q", i, d.Denied)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := admitted.Load(); got != 40 {
		t.Fatalf("%d of %d concurrent admissions admitted with 40 slots", got, n)
	}
	if pc.pipelines.Load() == 0 {
		t.Fatal("no pipeline of more than one call was sent for 300 concurrent admissions on one lane")
	}
	if calls, _ := commandStat(t, c, "evalsha"); calls < n {
		t.Fatalf("redis saw %d EVALSHA for %d admissions", calls, n)
	}
	t.Logf("%d pipelines carried %d calls", pc.pipelines.Load(), pc.cmds.Load())

	// Settle every admitted one concurrently after a SCRIPT FLUSH.
	if err := c.ScriptFlush(ctxb).Err(); err != nil {
		t.Fatal(err)
	}
	var settled atomic.Int64
	for i := range n {
		wg.Go(func() {
			r, err := s.Settle(ctxb, SettleRequest{Tenant: "pipe", RequestID: fmt.Sprint(i), Tokens: 5, Cost: 50, Budgets: bs})
			if err != nil {
				t.Error(err)
			} else if r.Settled {
				settled.Add(1)
			}
		})
	}
	wg.Wait()
	if got := settled.Load(); got != 40 {
		t.Fatalf("%d settles settled, want the 40 admitted", got)
	}
	st, err := s.Budgets(ctxb, "pipe", bs)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range st {
		if b.Spent != 40*50 || b.Reserved != 0 {
			t.Errorf("%s: spent %d reserved %d, want %d and 0", b.Name, b.Spent, b.Reserved, 40*50)
		}
	}
}

// A call waiting for a lane whose caller gives up is never sent: it cannot
// leave a reservation behind that nobody will settle.
func TestRedisPipelineDropsAbandonedCalls(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := newClient(t, srv.Addr())
	s, err := NewRedis(RedisOptions{Client: c, Timeout: 5 * time.Second, Pipelines: 1})
	if err != nil {
		t.Fatal(err)
	}
	admit := func(ctx context.Context, id string) error {
		_, err := s.Admit(ctx, AdmitRequest{Tenant: "gone", RequestID: id, Cost: 1})
		return err
	}
	if err := admit(ctxb, "warm"); err != nil {
		t.Fatal(err)
	}
	// Hold the one lane: Redis pauses every client's commands for a while
	// (CLIENT PAUSE, https://redis.io/docs/latest/commands/client-pause/).
	ctl := newClient(t, srv.Addr())
	if err := ctl.Do(ctxb, "CLIENT", "PAUSE", 700, "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() { first <- admit(ctxb, "held") }()
	deadline := time.Now().Add(2 * time.Second)
	for s.pipe.busy() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(ctxb, 100*time.Millisecond)
	defer cancel()
	if err := admit(ctx, "abandoned"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued call whose caller gave up: %v, want its deadline", err)
	}
	if err := <-first; err != nil {
		t.Fatalf("held call: %v", err)
	}
	// The lane drains the queue after the held call; give it the moment.
	time.Sleep(100 * time.Millisecond)
	if n, err := c.Exists(ctxb, tenantPrefix("gone")+"r:abandoned").Result(); err != nil || n != 0 {
		t.Fatalf("the abandoned admission was sent (record exists: %d, %v)", n, err)
	}
	if n, err := c.Exists(ctxb, tenantPrefix("gone")+"r:held").Result(); err != nil || n != 1 {
		t.Fatalf("the held admission's record: %d, %v", n, err)
	}
}
