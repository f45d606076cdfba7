package limiter

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultPipelines is RedisOptions.Pipelines' default.
const DefaultPipelines = 2

// maxPipeline bounds the calls one pipeline carries.
const maxPipeline = 64

// pipeline coalesces the script calls that would otherwise wait for one
// another into pipelines. Redis runs one command at a time, so calls sent
// together on many connections queue inside it anyway; what each costs on
// top of its script is the network around it — a read and a write system
// call in redis-server and in this process, and a goroutine woken for the
// reply — and in the load harness that was about a third of redis-server's
// CPU per call. Sent as one pipeline, N calls share one read and one write
// on each side.
//
// Each call is still its own EVALSHA, atomic on its own and answered on its
// own: a pipeline is one network write, not a transaction, and a call's
// round trip is the pipeline's. While fewer than lanes calls or pipelines
// are in flight a call goes at once, on its caller's goroutine, as before;
// beyond that it waits for a lane to free, and goes with every other call
// that queued meanwhile (at most maxPipeline) — a call is never held back
// while the store is idle.
type pipeline struct {
	client redis.UniversalClient
	// timeout bounds one call or pipeline, as Redis.callTimeout.
	timeout time.Duration
	lanes   int

	mu      sync.Mutex
	queue   []*pipeCall
	running int // calls or pipelines in flight; queue is empty while below lanes
}

type pipeCall struct {
	ctx    context.Context
	script *redis.Script
	keys   []string
	args   []any
	val    any
	err    error
	done   chan struct{}
}

// do runs one script call and returns its reply.
//
// A call is bounded by timeout from the moment it is made, queued or not,
// as it was on its own connection: a store that stops answering fails
// each call within timeout, not after the pipelines queued before it.
func (p *pipeline) do(ctx context.Context, s *redis.Script, keys []string, args []any) (any, error) {
	callCtx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	p.mu.Lock()
	if p.running < p.lanes {
		p.running++
		p.mu.Unlock()
		v, err := s.Run(callCtx, p.client, keys, args...).Result()
		p.release()
		return v, err
	}
	c := &pipeCall{ctx: callCtx, script: s, keys: keys, args: args, done: make(chan struct{})}
	p.queue = append(p.queue, c)
	p.mu.Unlock()
	select {
	case <-c.done:
		return c.val, c.err
	case <-callCtx.Done():
		// Not sent yet, it never will be (exec skips it); already sent, its
		// outcome is as unknown as a call cut short on its own connection.
		return nil, callCtx.Err()
	}
}

// release ends a lane's call: the lane goes on with what queued meanwhile,
// on a goroutine of its own so that the caller is answered now.
func (p *pipeline) release() {
	p.mu.Lock()
	if len(p.queue) == 0 {
		p.running--
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	go p.drain()
}

// drain sends what is queued as pipelines until the queue is empty, then
// frees its lane.
func (p *pipeline) drain() {
	for {
		p.mu.Lock()
		batch := p.queue
		if len(batch) > maxPipeline {
			batch, p.queue = batch[:maxPipeline:maxPipeline], batch[maxPipeline:]
		} else {
			p.queue = nil
		}
		if len(batch) == 0 {
			p.running--
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		p.exec(batch)
	}
}

// exec sends batch as one pipeline and answers each call. A call whose
// caller has gone, or whose time is up, is not sent.
func (p *pipeline) exec(batch []*pipeCall) {
	live := make([]*pipeCall, 0, len(batch))
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.err = err
			close(c.done)
			continue
		}
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	// The calls' own contexts are many; the pipeline is bounded as one call
	// is, and the client's read and write timeouts time its round trip.
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	if len(live) == 1 {
		c := live[0]
		c.val, c.err = c.script.Run(ctx, p.client, c.keys, c.args...).Result()
		close(c.done)
		return
	}
	cmds := make([]*redis.Cmd, len(live))
	// Each command's error is its own (Cmd.Err), so the pipeline's is not
	// needed.
	_, _ = p.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, c := range live {
			cmds[i] = c.script.EvalSha(ctx, pipe, c.keys, c.args...)
		}
		return nil
	})
	for i, c := range live {
		cmd := cmds[i]
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			// Redis does not know the script yet (first use, a restart or
			// SCRIPT FLUSH): nothing ran; send it whole, once.
			cmd = c.script.Eval(ctx, p.client, c.keys, c.args...)
		}
		c.val, c.err = cmd.Result()
		close(c.done)
	}
}

// busy reports the lanes in use, for tests.
func (p *pipeline) busy() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running
}
