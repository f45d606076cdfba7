package gate

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// paceRecorder adds pacing's observations to the recorder.
type paceRecorder struct {
	*recorder
	mu      sync.Mutex
	engaged map[string]int
	rates   map[string]float64
	denied  int
}

func (r *paceRecorder) PacingEngaged(host string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.engaged[host] = n
}

func (r *paceRecorder) PacingRate(host, window string, perSecond float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rates[host+"/"+window] = perSecond
}

func (r *paceRecorder) PacedDenied(string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.denied++
}

// newPaceHarness is a harness whose gate reports pacing to pr, on the fake
// clock throughout.
func newPaceHarness(t *testing.T, cfgYAML string) (*harness, *paceRecorder) {
	h := newHarness(t, cfgYAML)
	pr := &paceRecorder{recorder: h.obs, engaged: map[string]int{}, rates: map[string]float64{}}
	g, err := New(Options{Config: policy.NewHolder(h.cfg), Store: h.mem, Pacer: limiter.NewPaceMemory(h.clock.Now),
		Observer: pr, Logger: slog.New(h.logs), Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	h.g = g
	return h, pr
}

// pacedWait is the third request's wait at 57 a minute, two at once: the
// schedule's GCRA arithmetic (floored microseconds) written out.
var pacedWait = func() time.Duration {
	inc, tol := int64(60_000_000/57), int64(2*60_000_000/57)
	return time.Duration(3*inc-tol) * time.Microsecond
}()

// paceBody bounds its output: its token estimate is small next to the
// tokens a minute.
const paceBody = `{"model":"gpt-4o-mini","max_tokens":100,"messages":[{"role":"user","content":"Hello!"}]}`

const paceYAML = `
policies:
  default: {}
`

func chat(key string) HeaderList {
	return post(pathChat, tenantHeader("acme"), Header{":authority", "api.openai.com"}, Header{"authorization", "Bearer " + key})
}

// openaiReading is an OpenAI answer's rate-limit headers.
func openaiReading(limit, remaining int, reset time.Duration) []Header {
	return []Header{
		{"x-ratelimit-limit-requests", strconv.Itoa(limit)}, {"x-ratelimit-remaining-requests", strconv.Itoa(remaining)},
		{"x-ratelimit-reset-requests", reset.String()},
	}
}

// wantPaced checks a refusal is pacing's, with the wait it should name.
func wantPaced(t *testing.T, x *Exchange, r *Reply, wait time.Duration) {
	t.Helper()
	if r.Status != 429 {
		t.Fatalf("status %d, want 429", r.Status)
	}
	want := map[string]string{
		"retry-after-ms": strconv.FormatInt(wait.Milliseconds(), 10),
		"retry-after":    strconv.FormatInt(int64((wait+time.Second-1)/time.Second), 10),
		"x-should-retry": "true", contract.DeniedHeader: DeniedUpstreamPaced,
	}
	for name, v := range want {
		if got, _ := header(r.Headers, name); got != v {
			t.Errorf("%s = %q, want %q", name, got, v)
		}
	}
	if x.retryIn != wait {
		t.Errorf("retryIn %s, want %s (the queue waits on it)", x.retryIn, wait)
	}
}

func TestPacingFromDeclaredLimits(t *testing.T) {
	// 60 requests a minute declared: paced from the first request at 57 a
	// minute (headroom 0.95), two at once (burst 0.05 of 57).
	h, pr := newPaceHarness(t, paceYAML+`
upstreams:
  hosts:
    api.openai.com: {limits: {requests: 60, tokens: 100000}}
`)
	for i := range 2 {
		x, _ := h.admit(chat("sk-one"), paceBody)
		_ = i
		x.Abort()
	}
	x, r := h.refuse(chat("sk-one"), paceBody)
	interval := pacedWait
	wantPaced(t, x, r, interval)
	if o := h.obs.lastOutcome(t); o.Decision != "denied_upstream_paced" || o.Result != ResultDenied {
		t.Errorf("outcome %+v", o)
	}
	if pr.denied != 1 || pr.engaged["api.openai.com"] != 1 || pr.rates["api.openai.com/requests"] != 57.0/60 {
		t.Errorf("metrics: denied %d, engaged %v, rates %v", pr.denied, pr.engaged, pr.rates)
	}
	// Another credential is another upstream with its own schedule.
	x2, _ := h.admit(chat("sk-two"), paceBody)
	x2.Abort()
	h.clock.Advance(interval)
	x3, _ := h.admit(chat("sk-one"), paceBody)
	x3.Abort()
	if n := h.obs.calls("pace"); n != 5 {
		t.Errorf("%d pace calls, want 5 (every request while paced)", n)
	}
}

func TestPacingEngagesFromTheProviderReading(t *testing.T) {
	cases := []struct {
		name      string
		remaining int
		replicas  int
		// unpaced is how many requests go without asking the pacer after
		// the reading, with no answer in between.
		unpaced int
	}{
		// 60 a minute, engage_below 0.25: under 15 left engages.
		{"a low reading engages at once", 10, 1, 0},
		// 59 left; 15 must stay: the 45th unanswered request is the last
		// that goes unpaced.
		{"in-flight requests engage it", 59, 1, 45},
		// With three replicas each counts its own in flight three times.
		{"three replicas engage it sooner", 59, 3, 15},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, _ := newPaceHarness(t, "store: {replicas: "+strconv.Itoa(c.replicas)+"}\n"+paceYAML)
			// Nothing declared: the first request goes unpaced, and its
			// answer teaches the limit.
			x, _ := h.admit(chat("sk-one"), paceBody)
			providerAnswer(x, "200", openaiReading(60, c.remaining, 30*time.Second)...)
			for i := range c.unpaced {
				h.admit(chat("sk-one"), paceBody) // held open: in flight
				if n := h.obs.calls("pace"); n != 0 {
					t.Fatalf("request %d asked the pacer", i+1)
				}
			}
			// Engaged now: two go on the burst, the third waits.
			for range 2 {
				h.admit(chat("sk-one"), paceBody)
			}
			x, r := h.refuse(chat("sk-one"), paceBody)
			wantPaced(t, x, r, pacedWait)
			if n := h.obs.calls("admit"); n != 0 {
				t.Errorf("%d admissions: the policy limits nothing, so only the pacer is asked", n)
			}
		})
	}
}

func TestPacingKeepsTheLowestReading(t *testing.T) {
	h, _ := newPaceHarness(t, paceYAML)
	x0, _ := h.admit(chat("sk-one"), paceBody)
	providerAnswer(x0, "200", openaiReading(60, 59, 30*time.Second)...)
	older, _ := h.admit(chat("sk-one"), paceBody)
	newer, _ := h.admit(chat("sk-one"), paceBody)
	// The later request is answered first, with little left; the earlier
	// one's answer, from before, says more is left, and must not undo it.
	providerAnswer(newer, "200", openaiReading(60, 10, 50*time.Second)...)
	providerAnswer(older, "200", openaiReading(60, 50, 10*time.Second)...)
	for range 2 {
		h.admit(chat("sk-one"), paceBody)
	}
	x, r := h.refuse(chat("sk-one"), paceBody)
	wantPaced(t, x, r, pacedWait)
}

func TestPacingReleasesOnlyWhenCaughtUp(t *testing.T) {
	h, pr := newPaceHarness(t, paceYAML+`
upstreams:
  hosts:
    api.openai.com: {limits: {requests: 60}}
`)
	var held []*Exchange
	for range 2 {
		x, _ := h.admit(chat("sk-one"), paceBody)
		held = append(held, x)
	}
	// The provider has plenty left, but requests are waiting on the pace:
	// releasing now would let the crowd through at once.
	for _, x := range held {
		providerAnswer(x, "200", openaiReading(60, 55, 5*time.Second)...)
	}
	h.refuse(chat("sk-one"), paceBody)
	if pr.engaged["api.openai.com"] != 1 {
		t.Fatalf("released with requests waiting: %v", pr.engaged)
	}
	// A minute later the reading is void (past its reset: full again) and
	// the schedule caught up: the next paced request finds slack, and the
	// one after goes unpaced.
	h.clock.Advance(time.Minute)
	x, _ := h.admit(chat("sk-one"), paceBody)
	x.Abort()
	calls := h.obs.calls("pace")
	x, _ = h.admit(chat("sk-one"), paceBody)
	x.Abort()
	if n := h.obs.calls("pace"); n != calls {
		t.Errorf("still paced after catching up (%d pace calls, had %d)", n, calls)
	}
	if pr.engaged["api.openai.com"] != 0 || pr.rates["api.openai.com/requests"] != 0 {
		t.Errorf("after the release: engaged %v, rates %v", pr.engaged, pr.rates)
	}
}

func TestPacingOffOrUnknown(t *testing.T) {
	t.Run("turned off", func(t *testing.T) {
		h, _ := newPaceHarness(t, paceYAML+`
upstreams:
  pacing: {enabled: false}
  hosts:
    api.openai.com: {limits: {requests: 60}}
`)
		for range 10 {
			x, _ := h.admit(chat("sk-one"), paceBody)
			providerAnswer(x, "200", openaiReading(60, 1, 30*time.Second)...)
		}
		if n := h.obs.calls("pace"); n != 0 {
			t.Errorf("%d pace calls with pacing off", n)
		}
	})
	t.Run("cold, nothing declared", func(t *testing.T) {
		h, _ := newPaceHarness(t, paceYAML)
		// Before any answer nothing is known: every request goes (the
		// README says to declare limits for a cold start under load).
		for range 100 {
			h.admit(chat("sk-one"), paceBody)
		}
		if n := h.obs.calls("pace"); n != 0 {
			t.Errorf("%d pace calls before any reading", n)
		}
	})
	t.Run("answers end the in-flight count", func(t *testing.T) {
		h, _ := newPaceHarness(t, paceYAML)
		x, _ := h.admit(chat("sk-one"), paceBody)
		providerAnswer(x, "200", openaiReading(60, 59, 30*time.Second)...)
		// 200 requests one after another, each answered (or refused, or cut
		// short) before the next: never more than one in flight.
		for i := range 200 {
			x, _ := h.admit(chat("sk-one"), paceBody)
			switch i % 3 {
			case 0:
				providerAnswer(x, "200", openaiReading(60, 59, 30*time.Second)...)
			case 1:
				x.Abort()
			default:
				providerAnswer(x, "500")
			}
		}
		if n := h.obs.calls("pace"); n != 0 {
			t.Errorf("%d pace calls: answered requests still counted in flight", n)
		}
	})
}

func TestPacingAnthropicTokenWindows(t *testing.T) {
	// Anthropic reports requests, input and output tokens apart (and their
	// sum): a low output window engages pacing, and the output a request
	// reserves (its max_tokens) is what it costs there.
	h, _ := newPaceHarness(t, paceYAML)
	anth := post(pathMessages, tenantHeader("acme"), Header{":authority", "api.anthropic.com"}, Header{"x-api-key", "sk-ant-one"})
	reset := t0.Add(30 * time.Second).Format(time.RFC3339)
	reading := []Header{
		{"anthropic-ratelimit-requests-limit", "4000"}, {"anthropic-ratelimit-requests-remaining", "3990"}, {"anthropic-ratelimit-requests-reset", reset},
		{"anthropic-ratelimit-input-tokens-limit", "200000"}, {"anthropic-ratelimit-input-tokens-remaining", "199000"}, {"anthropic-ratelimit-input-tokens-reset", reset},
		{"anthropic-ratelimit-output-tokens-limit", "8000"}, {"anthropic-ratelimit-output-tokens-remaining", "1000"}, {"anthropic-ratelimit-output-tokens-reset", reset},
	}
	x, _ := h.admit(anth, sonnetBody)
	providerAnswer(x, "200", reading...)
	// Output paced at 7600 a minute, 380 at once: one request of 256 goes,
	// the next waits for its 256 tokens less the 124 left of the burst.
	x, _ = h.admit(anth, sonnetBody)
	x.Abort()
	x, r := h.refuse(anth, sonnetBody)
	inc, tol := int64(256*60_000_000/7600), int64(380*60_000_000/7600)
	wantPaced(t, x, r, time.Duration(2*inc-tol)*time.Microsecond)
	if _, _, msg := errorType(t, r.Body); !strings.Contains(msg, "output_tokens per window") {
		t.Errorf("message %q does not name the window", msg)
	}
}

// paceLanesYAML: 200 requests a minute declared, so paced from the start at
// 190 (headroom 0.95), 9 at once; batch's share of that is 57 a minute, 2
// at once — the schedule pacedWait is written out for.
const paceLanesYAML = `
policies:
  default: {}
  shaped:
    lanes:
      interactive: {priority: 2, share: 0.7, default: true}
      batch: {priority: 1, share: 0.3}
tenants:
  acme: {policy: shaped}
upstreams:
  hosts:
    api.openai.com: {limits: {requests: 200}}
`

// paceLane sends one chat request of acme on lane.
func (h *harness) paceLane(lane string) (*Exchange, BodyVerdict) {
	h.t.Helper()
	x, hv := h.g.Begin(context.Background(), Request{Headers: chat("sk-one"), RouteLane: lane})
	if hv.PassThrough || hv.Reply != nil {
		h.t.Fatalf("Begin: %+v", hv)
	}
	v := x.Body([]byte(paceBody))
	if v.Wait != nil {
		h.t.Fatalf("lane %s waits; it has no max_wait", lane)
	}
	return x, v
}

// paceFill sends n requests of lane, ending each that goes; it returns how
// many went and the last refusal.
func (h *harness) paceFill(lane string, n int) (int, *Exchange, *Reply) {
	h.t.Helper()
	went := 0
	var lx *Exchange
	var last *Reply
	for range n {
		x, v := h.paceLane(lane)
		if v.Reply != nil {
			lx, last = x, v.Reply
			continue
		}
		went++
		x.Abort()
	}
	return went, lx, last
}

func TestPacingSharesTheUpstreamByLane(t *testing.T) {
	t.Run("batch saturating takes its share, interactive still goes", func(t *testing.T) {
		h, _ := newPaceHarness(t, paceLanesYAML)
		n, x, r := h.paceFill("batch", 10)
		if n != 2 || r == nil {
			t.Fatalf("batch: %d went, want its burst of 2 (30%% of 9)", n)
		}
		wantPaced(t, x, r, pacedWait)
		if _, _, msg := errorType(t, r.Body); !strings.Contains(msg, "lanes at or below batch get 30% of its requests") {
			t.Errorf("batch's refusal says %q", msg)
		}
		if n, _, _ := h.paceFill("interactive", 20); n != 7 {
			t.Errorf("interactive beside saturated batch: %d went, want the 7 left of 9", n)
		}
	})
	t.Run("interactive idle, batch is paced at its share", func(t *testing.T) {
		h, _ := newPaceHarness(t, paceLanesYAML)
		// Batch asks 5 times a second for a minute: 300 tries, and the
		// upstream's pace would take 190 + 9 of them; batch's share is 57 a
		// minute and its burst of 2.
		went := 0
		for i := range 300 {
			if i > 0 {
				h.clock.Advance(200 * time.Millisecond)
			}
			n, _, _ := h.paceFill("batch", 1)
			went += n
		}
		if went < 57 || went > 59 {
			t.Fatalf("batch alone: %d went in a minute, want 57 a minute and its burst of 2", went)
		}
		// Batch at its share keeps the upstream's own schedule caught up:
		// interactive still finds the whole burst.
		if n, _, _ := h.paceFill("interactive", 20); n != 9 {
			t.Errorf("interactive after a minute of batch: %d went at once, want the burst of 9", n)
		}
	})
	t.Run("interactive may use batch's unused share", func(t *testing.T) {
		h, _ := newPaceHarness(t, paceLanesYAML)
		if n, _, _ := h.paceFill("interactive", 20); n != 9 {
			t.Fatalf("interactive alone: %d went, want the whole burst of 9", n)
		}
		_, x, r := h.paceFill("batch", 1)
		if r == nil {
			t.Fatal("batch went after interactive used the whole burst")
		}
		if _, _, msg := errorType(t, r.Body); strings.Contains(msg, "lanes at or below") {
			t.Errorf("batch refused by its group (%q), want the whole schedule", msg)
		}
		// The whole schedule's wait: 190 a minute, 9 at once.
		inc, tol := int64(60_000_000/190), int64(9*60_000_000/190)
		wantPaced(t, x, r, time.Duration(10*inc-tol)*time.Microsecond)
	})
}

// TestPacingReleasesAnIdleUpstream: an upstream paced from a low reading
// that then goes idle — every request answered, none asked for a whole
// window — is released by ReleaseIdlePacing (serve calls it every few
// seconds), so its engaged gauge falls back to 0 without a next request;
// before a window has passed it is not, and one paced from declared limits
// alone stays paced.
func TestPacingReleasesAnIdleUpstream(t *testing.T) {
	h, pr := newPaceHarness(t, paceYAML)
	x, _ := h.admit(chat("sk-one"), paceBody)
	providerAnswer(x, "200", openaiReading(60, 10, 30*time.Second)...)
	x, _ = h.admit(chat("sk-one"), paceBody) // engaged: asks the pacer
	providerAnswer(x, "200", openaiReading(60, 9, 30*time.Second)...)
	if pr.engaged["api.openai.com"] != 1 || h.obs.calls("pace") != 1 {
		t.Fatalf("not engaged: %v, %d pace calls", pr.engaged, h.obs.calls("pace"))
	}
	h.clock.Advance(30 * time.Second)
	h.g.ReleaseIdlePacing()
	if pr.engaged["api.openai.com"] != 1 {
		t.Fatalf("released before a window passed idle: %v", pr.engaged)
	}
	h.clock.Advance(31 * time.Second)
	h.g.ReleaseIdlePacing()
	if pr.engaged["api.openai.com"] != 0 || pr.rates["api.openai.com/requests"] != 0 {
		t.Errorf("an idle upstream still reads as paced: engaged %v, rates %v", pr.engaged, pr.rates)
	}
	// Released for good: the next request goes without asking the pacer.
	x, _ = h.admit(chat("sk-one"), paceBody)
	x.Abort()
	if n := h.obs.calls("pace"); n != 1 {
		t.Errorf("%d pace calls after the release, want still 1", n)
	}

	d, pd := newPaceHarness(t, paceYAML+`
upstreams:
  hosts:
    api.openai.com: {limits: {requests: 60}}
`)
	x, _ = d.admit(chat("sk-one"), paceBody)
	x.Abort()
	d.clock.Advance(2 * time.Minute)
	d.g.ReleaseIdlePacing()
	if pd.engaged["api.openai.com"] != 1 {
		t.Errorf("an upstream paced from declared limits alone was released without a reading: %v", pd.engaged)
	}
}
