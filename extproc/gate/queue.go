package gate

import (
	"slices"
	"sync"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// The admission queue. A request denied for what capacity will cure (rate,
// concurrency, an upstream's cool-down or pacing: a denial that sets
// retryIn) whose lane has a max_wait waits for capacity instead of an
// instant 429 — on its own stream's goroutine, which exists anyway: the
// queue holds no goroutine, no reservation and no slot of its own.
//
// Requests of one org and policy wait in one line, a FIFO per lane. Only a
// lane's head tries admission, and one try runs at a time per line: when
// capacity frees, the head of the highest lane whose retry is due tries
// first, then the next. A head tries again when its denial said capacity
// returns (retryIn), not in a loop; a concurrency slot freed on this
// replica wakes the line at once. A new request joins the line without
// trying when its lane, or a higher one, already waits, so nobody passes
// the queue. The queue is bounded per replica in requests and in body
// bytes; a request past either is answered at once, and counted.
//
// A wait ends: admitted (the verdict goes on as Body's would), denied for
// good (a budget, or capacity not back before the deadline), at the
// deadline (the last denial is the answer), or when the client goes away
// (the stream's context is cancelled; the request leaves the queue at
// once and nothing is recorded against it but its wait).

// Results of a wait, the values of tokenwarden_queue_wait_seconds{result}.
const (
	WaitAdmitted     = "admitted"
	WaitDenied       = "denied"       // denied for good while waiting
	WaitTimedOut     = "timed_out"    // max_wait passed without capacity
	WaitDisconnected = "disconnected" // the client went away
)

// Reasons a request that would wait is answered at once, the values of
// tokenwarden_queue_overflows_total{reason}.
const (
	OverflowRequests = "requests"
	OverflowBytes    = "bytes"
)

// DeniedQueueTimeout is the x-tokenwarden-denied value of a request that
// waited its lane's max_wait behind others without its own turn.
const DeniedQueueTimeout = "queue/max_wait"

// QueueObserver is implemented by an Observer that records the queue and
// the lanes (package observe's Metrics).
type QueueObserver interface {
	// QueueWait records a wait as it ended, by lane and result.
	QueueWait(lane, result string, waited time.Duration)
	// QueueOverflow records a request answered at once because the queue
	// was full (requests or bytes).
	QueueOverflow(lane, reason string)
	// ProviderHeaders records the time from forwarding a request to its
	// response headers, by policy and lane.
	ProviderHeaders(policy, lane string, took time.Duration)
}

// Wait is a BodyVerdict's "waiting": the request waits in the queue for
// up to For; Extend, when above zero, is the message timeout Envoy must be
// asked for first (override_message_timeout) so that it does not answer
// 504 meanwhile. Then Exchange.Wait gives the final verdict.
type Wait struct {
	For    time.Duration
	Extend time.Duration
}

// Timer is a one-shot timer: C fires once after d; Stop releases it.
type Timer struct {
	C    <-chan time.Time
	Stop func() bool
}

func realTimer(d time.Duration) Timer {
	t := time.NewTimer(d)
	return Timer{C: t.C, Stop: t.Stop}
}

// queueState is an Exchange's part of the queue.
type queueState struct {
	pend pendingBody
	// start is when the body arrived: Envoy's message timer runs from
	// about then. deadline is when a wait must end, zero when the request
	// may not wait (its lane has no max_wait, or it is a batch).
	start, deadline time.Time
	// deciding is set while an admission attempt runs: only its denials
	// may be held for a wait.
	deciding bool
	held     *heldReply
	w        *waiter
}

// pendingBody is the body of a request until it is forwarded: as it came,
// and as it will go.
type pendingBody struct {
	body, out []byte
	changed   bool
	path      string
}

func (p *pendingBody) bytes() int64 {
	n := int64(len(p.body))
	if p.changed {
		n += int64(len(p.out))
	}
	return n
}

// heldReply is a denial kept for the end of a wait, not yet recorded.
type heldReply struct {
	reply   *Reply
	outcome *Outcome
}

// mayWait reports whether the denial being built may be held for a wait:
// an attempt is deciding, the denial names a retry, and capacity is
// expected back before the lane's deadline.
func (x *Exchange) mayWait() bool {
	if !x.q.deciding || x.retryIn <= 0 || x.q.deadline.IsZero() {
		return false
	}
	return !x.g.opts.Now().Add(x.retryIn).After(x.q.deadline)
}

// admitOrWait admits the planned body, or enters the queue.
func (x *Exchange) admitOrWait() BodyVerdict {
	g := x.g
	now := g.opts.Now()
	x.q.start = now
	if x.lane != nil && x.lane.MaxWait > 0 && !x.batch {
		x.q.deadline = now.Add(x.lane.MaxWait)
		if lw := x.cfg.Queue.LongestWait(); lw > 0 && x.q.deadline.After(now.Add(lw)) {
			x.q.deadline = now.Add(lw) // what Envoy allows (policy.Queue)
		}
	}
	if !x.q.deadline.IsZero() && g.queue.waiting(x) {
		// Others of its lane, or a higher one, wait already: behind them.
		if g.queue.enter(x) {
			return BodyVerdict{Wait: x.waitVerdict()}
		}
	}
	v, wait := x.attempt()
	if !wait {
		return v
	}
	if g.queue.enter(x) {
		return BodyVerdict{Wait: x.waitVerdict()}
	}
	return BodyVerdict{Reply: x.release()}
}

// waitVerdict says how long the wait may last and what Envoy's message
// timer must be extended to.
func (x *Exchange) waitVerdict() *Wait {
	now := x.g.opts.Now()
	w := &Wait{For: x.q.deadline.Sub(now)}
	q := x.cfg.Queue
	if x.q.deadline.Add(policy.QueueMargin).After(x.q.start.Add(q.MessageTimeout)) && q.MaxMessageTimeout > 0 {
		w.Extend = min(w.For+policy.QueueMargin, q.MaxMessageTimeout)
	}
	return w
}

// release answers a wait that ends without admission: the held denial,
// recorded now, or the queue's own when the request never had its turn.
func (x *Exchange) release() *Reply {
	if h := x.q.held; h != nil {
		x.q.held = nil
		x.answered(h.outcome)
		return h.reply
	}
	x.retryIn = 0
	x.decisionTag = "denied_queue_timeout"
	x.g.obs.Admission(x.cfg.TenantLabel(x.tenant), x.decisionTag)
	var h HeaderEdits
	h.set("retry-after", "1")
	h.set("x-should-retry", "true")
	h.set(contract.DeniedHeader, DeniedQueueTimeout)
	wait := x.lane.MaxWait.Round(time.Millisecond).String()
	return x.reject(429, wire.ErrorRateLimited, DeniedQueueTimeout,
		"tokenwarden: no capacity for this request within the "+x.lane.Name+" lane's wait of "+wait+"; retry", ResultDenied, &h)
}

// Wait finishes a wait Body started (its verdict had Wait set): it returns
// when the request is admitted (the verdict to forward), denied, out of
// time, or its client is gone (Gone). It blocks the caller — the stream's
// own goroutine — and holds nothing else while it does.
func (x *Exchange) Wait() BodyVerdict {
	w := x.q.w
	if w == nil {
		return BodyVerdict{Reply: x.release()}
	}
	g, q := x.g, x.g.queue
	deadline := g.timer(x.q.deadline.Sub(g.opts.Now()))
	defer deadline.Stop()
	for {
		var retry Timer
		if d := q.due(w).Sub(g.opts.Now()); d > 0 {
			retry = g.timer(d)
		}
		var turn, timedOut, gone bool
		select {
		case <-x.ctx.Done():
			gone = true
		case <-deadline.C:
			timedOut = true
		case <-w.turn:
			turn = true
		case <-retry.C:
		}
		if retry.Stop != nil {
			retry.Stop()
		}
		switch {
		case gone:
			q.leave(w, WaitDisconnected)
			x.q.held, x.q.pend = nil, pendingBody{}
			return BodyVerdict{Gone: true}
		case timedOut:
			q.leave(w, WaitTimedOut)
			return BodyVerdict{Reply: x.release()}
		case turn:
			v, wait := x.attempt()
			if !wait {
				result := WaitAdmitted
				if v.Reply != nil {
					result = WaitDenied
				}
				q.leave(w, result)
				return v
			}
			q.again(w, g.opts.Now().Add(x.retryIn))
		default:
			q.poke(w)
		}
	}
}

// Leave gives up a wait Body started, without waiting: the stream cannot
// carry it (its message could not be sent).
func (x *Exchange) Leave() {
	if w := x.q.w; w != nil {
		x.g.queue.leave(w, WaitDisconnected)
		x.q.held, x.q.pend = nil, pendingBody{}
	}
}

func (g *Gate) timer(d time.Duration) Timer {
	if g.opts.Timer != nil {
		return g.opts.Timer(d)
	}
	return realTimer(d)
}

// queue is this replica's admission queue.
type queue struct {
	g     *Gate
	mu    sync.Mutex
	lines map[string]*line
	n     int
	bytes int64
}

// line is one org and policy's waiting requests.
type line struct {
	key   string
	lanes []*laneQueue // highest priority first
	busy  *waiter      // the head whose attempt runs
	// freed records a slot given back while an attempt ran: the attempt
	// may have missed it, so its head tries again at once, before any
	// lower lane (released).
	freed bool
}

type laneQueue struct {
	name     string
	priority int
	ws       []*waiter // FIFO
}

type waiter struct {
	x     *Exchange
	line  *line
	lane  *laneQueue
	since time.Time
	bytes int64
	// next is when the waiter may try again (zero: at once); concurrency
	// marks a last denial for concurrency, which a slot freed here cures.
	next        time.Time
	concurrency bool
	turn        chan struct{}
}

func newQueue(g *Gate) *queue { return &queue{g: g, lines: map[string]*line{}} }

func lineKey(x *Exchange) string { return x.tenant + "\x00" + x.policyName() }

// waiting reports whether x's lane or a higher one has requests waiting in
// x's line.
func (q *queue) waiting(x *Exchange) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	l := q.lines[lineKey(x)]
	if l == nil {
		return false
	}
	for _, lq := range l.lanes {
		if lq.priority < x.lane.Priority {
			break
		}
		if len(lq.ws) > 0 {
			return true
		}
	}
	return false
}

// enter puts x at the end of its lane, within the queue's bounds; false
// (counted) when the queue is full.
func (q *queue) enter(x *Exchange) bool {
	bytes := x.q.pend.bytes()
	bound := x.cfg.Queue
	q.mu.Lock()
	reason := ""
	switch {
	case q.n+1 > bound.MaxRequests:
		reason = OverflowRequests
	case q.bytes+bytes > bound.MaxBytes:
		reason = OverflowBytes
	}
	if reason != "" {
		q.mu.Unlock()
		if o, ok := q.g.obs.(QueueObserver); ok {
			o.QueueOverflow(x.lane.Name, reason)
		}
		return false
	}
	key := lineKey(x)
	l := q.lines[key]
	if l == nil {
		l = &line{key: key}
		q.lines[key] = l
	}
	i := slices.IndexFunc(l.lanes, func(lq *laneQueue) bool { return lq.name == x.lane.Name })
	if i < 0 {
		i, _ = slices.BinarySearchFunc(l.lanes, x.lane.Priority, func(lq *laneQueue, p int) int { return p - lq.priority })
		l.lanes = slices.Insert(l.lanes, i, &laneQueue{name: x.lane.Name, priority: x.lane.Priority})
	}
	now := q.g.opts.Now()
	w := &waiter{x: x, line: l, lane: l.lanes[i], since: now, bytes: bytes, turn: make(chan struct{}, 1)}
	if x.retryIn > 0 {
		w.next = now.Add(x.retryIn)
		w.concurrency = x.decision.Denied == limiter.DimensionConcurrency && x.q.held != nil
	}
	w.lane.ws = append(w.lane.ws, w)
	q.n++
	q.bytes += bytes
	x.q.w = w
	q.dispatch(l, now)
	q.mu.Unlock()
	return true
}

// leave takes w out of the queue, for good, and lets the next head try.
func (q *queue) leave(w *waiter, result string) {
	q.mu.Lock()
	l := w.line
	if i := slices.Index(w.lane.ws, w); i >= 0 {
		w.lane.ws = slices.Delete(w.lane.ws, i, i+1)
		q.n--
		q.bytes -= w.bytes
	}
	if len(w.lane.ws) == 0 {
		l.lanes = slices.DeleteFunc(l.lanes, func(lq *laneQueue) bool { return lq == w.lane })
	}
	if l.busy == w {
		l.busy, l.freed = nil, false
	}
	now := q.g.opts.Now()
	if len(l.lanes) == 0 {
		delete(q.lines, l.key)
	} else {
		q.dispatch(l, now)
	}
	q.mu.Unlock()
	w.x.q.w = nil
	if o, ok := q.g.obs.(QueueObserver); ok {
		o.QueueWait(w.lane.name, result, now.Sub(w.since))
	}
}

// again records that w's attempt was denied: it tries next at next.
func (q *queue) again(w *waiter, next time.Time) {
	q.mu.Lock()
	w.next = next
	w.concurrency = w.x.decision.Denied == limiter.DimensionConcurrency
	if w.line.busy == w {
		w.line.busy = nil
		if w.line.freed && w.concurrency {
			w.next = time.Time{}
		}
		w.line.freed = false
	}
	q.dispatch(w.line, q.g.opts.Now())
	q.mu.Unlock()
}

// due is when w may try next.
func (q *queue) due(w *waiter) time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	return w.next
}

// poke lets w's line try again once w's retry is due.
func (q *queue) poke(w *waiter) {
	q.mu.Lock()
	q.dispatch(w.line, q.g.opts.Now())
	q.mu.Unlock()
}

// released wakes x's line after x gave back a concurrency slot: heads
// waiting for one try at once.
func (q *queue) released(x *Exchange) {
	q.mu.Lock()
	defer q.mu.Unlock()
	l := q.lines[lineKey(x)]
	if l == nil {
		return
	}
	if l.busy != nil {
		l.freed = true
	}
	for _, lq := range l.lanes {
		if h := lq.ws[0]; h.concurrency {
			h.next = time.Time{}
		}
	}
	q.dispatch(l, q.g.opts.Now())
}

// dispatch gives the turn to the head of the highest lane whose retry is
// due, unless an attempt already runs. Under q.mu.
func (q *queue) dispatch(l *line, now time.Time) {
	if l.busy != nil {
		return
	}
	for _, lq := range l.lanes {
		h := lq.ws[0]
		if h.next.After(now) {
			continue
		}
		l.busy = h
		select {
		case h.turn <- struct{}{}:
		default:
		}
		return
	}
}

// NoLane is the lane label of requests whose policy has no lanes.
const NoLane = "none"

// QueueStats is the queue as it stands: totals and each lane's length and
// oldest wait, summed over the lines.
type QueueStats struct {
	Requests int
	Bytes    int64
	Lanes    []LaneStats
}

// LaneStats is one lane's part of the queue.
type LaneStats struct {
	Lane   string
	Length int
	Oldest time.Duration
}

// QueueStats reports the queue now.
func (g *Gate) QueueStats() QueueStats {
	q := g.queue
	now := g.opts.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	s := QueueStats{Requests: q.n, Bytes: q.bytes}
	// Every configured lane is reported, waiting or not, so its series
	// exist from the start; a policy without lanes is lane "none".
	for _, name := range append(g.opts.Config.Load().LaneNames(), NoLane) {
		s.Lanes = append(s.Lanes, LaneStats{Lane: name})
	}
	for _, l := range q.lines {
		for _, lq := range l.lanes {
			i := slices.IndexFunc(s.Lanes, func(ls LaneStats) bool { return ls.Lane == lq.name })
			if i < 0 {
				s.Lanes = append(s.Lanes, LaneStats{Lane: lq.name})
				i = len(s.Lanes) - 1
			}
			s.Lanes[i].Length += len(lq.ws)
			s.Lanes[i].Oldest = max(s.Lanes[i].Oldest, now.Sub(lq.ws[0].since))
		}
	}
	slices.SortFunc(s.Lanes, func(a, b LaneStats) int {
		if a.Lane < b.Lane {
			return -1
		}
		if a.Lane > b.Lane {
			return 1
		}
		return 0
	})
	return s
}
