package gate

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// The systematic error of the calibration tests: the provider measures k
// times the dialect's estimate, give or take noise.
const (
	calibK     = 1.6
	calibNoise = 0.10 // measured = k × estimate × (1 ± up to 10%)
	calibTrain = 200
	calibEval  = 50
)

// calibWorkload draws prompts of varied sizes and what the provider would
// measure for each.
type calibWorkload struct{ rng *rand.Rand }

var calibWords = strings.Fields("the quick brown fox jumps over a lazy dog while tokenwarden counts every token it can see in prompts of any size")

func (w *calibWorkload) next(t *testing.T) (body string, measured func(raw int64) int64) {
	n := 5 + w.rng.IntN(400)
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(calibWords[w.rng.IntN(len(calibWords))])
	}
	noise := 1 + calibNoise*(2*w.rng.Float64()-1)
	body = fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":%q}]}`, b.String())
	return body, func(raw int64) int64 { return max(1, int64(math.Round(calibK*float64(raw)*noise))) }
}

// calibRespond answers x with a Messages response measuring input tokens,
// and settles it.
func calibRespond(t *testing.T, x *Exchange, input int64) {
	t.Helper()
	x.ResponseHeaders(jsonHeaders, false)
	body := fmt.Sprintf(`{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",`+
		`"content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,`+
		`"usage":{"input_tokens":%d,"output_tokens":10}}`, input)
	if !x.ResponseBody([]byte(body), true).Done {
		t.Fatal("response not done")
	}
	x.Settle()
}

// calibRequest runs one request of tenant through g and returns its raw and
// reserved input estimates and what was measured.
func calibRequest(t *testing.T, g *Gate, w *calibWorkload, tenant string) (raw, reserved, measured int64) {
	t.Helper()
	body, measure := w.next(t)
	x, hv := g.Begin(context.Background(), Request{Headers: post(pathMessages, tenantHeader(tenant))})
	if hv.Reply != nil || hv.PassThrough {
		t.Fatalf("Begin: %+v", hv)
	}
	if bv := x.Body([]byte(body)); bv.Reply != nil {
		t.Fatalf("Body refused: %d %s", bv.Reply.Status, bv.Reply.Body)
	}
	raw, reserved = x.rawInput, x.estimate.InputTokens
	measured = measure(raw)
	calibRespond(t, x, measured)
	return raw, reserved, measured
}

// calibEvaluate runs calibEval requests through g and returns the mean
// relative error of the uncalibrated and of the reserved (calibrated) input
// estimates.
func calibEvaluate(t *testing.T, g *Gate, w *calibWorkload, tenant string) (uncalibrated, calibrated float64) {
	t.Helper()
	for range calibEval {
		raw, reserved, m := calibRequest(t, g, w, tenant)
		uncalibrated += math.Abs(float64(raw-m)) / float64(m)
		calibrated += math.Abs(float64(reserved-m)) / float64(m)
	}
	return uncalibrated / calibEval, calibrated / calibEval
}

func checkCalibrated(t *testing.T, uncalibrated, calibrated float64) {
	t.Helper()
	t.Logf("input estimate error over %d requests after %d settled (measured = %.1f × estimate ± %.0f%%): uncalibrated %.1f%%, calibrated %.1f%%",
		calibEval, calibTrain, calibK, 100*calibNoise, 100*uncalibrated, 100*calibrated)
	if calibrated > uncalibrated/3 {
		t.Fatalf("calibrated error %.3f is more than a third of the uncalibrated %.3f", calibrated, uncalibrated)
	}
}

func TestCalibrationLearnsFromSettles(t *testing.T) {
	h := newHarness(t, baseYAML)
	w := &calibWorkload{rng: rand.New(rand.NewPCG(1, 2))}
	// The first request is reserved at the raw estimate: nothing is known.
	if raw, reserved, _ := calibRequest(t, h.g, w, "acme"); raw != reserved {
		t.Fatalf("first request reserved %d input tokens, its raw estimate is %d", reserved, raw)
	}
	for range calibTrain - 1 {
		calibRequest(t, h.g, w, "acme")
	}
	u, c := calibEvaluate(t, h.g, w, "acme")
	checkCalibrated(t, u, c)

	// The factor is the org's: another org starts from 1.
	if f := h.g.calib.factor("beta", "claude-sonnet-4-5"); f != 1 {
		t.Errorf("another org's first factor %.3f, want 1", f)
	}
	if raw, reserved, _ := calibRequest(t, h.g, w, "beta"); raw != reserved {
		t.Errorf("another org's first request reserved %d input tokens, its raw estimate is %d", reserved, raw)
	}
	// The error is exported per model, and the factor the settles returned.
	h.obs.mu.Lock()
	defer h.obs.mu.Unlock()
	if n := len(h.obs.estimates); n != calibTrain+calibEval+1 {
		t.Errorf("%d estimates observed, want %d", n, calibTrain+calibEval+1)
	}
	last := h.obs.factors[len(h.obs.factors)-2] // acme's last, before beta's first
	if last.model != "claude-sonnet-4-5" || math.Abs(last.factor-calibK) > 0.1 {
		t.Errorf("last factor observed %+v, want claude-sonnet-4-5 ≈%.1f", last, calibK)
	}
}

// A request that is not measured (the usage is missing, the model has no
// price) teaches nothing: the store is not asked to fold it.
func TestCalibrationOnlyFromMeasuredPricedRequests(t *testing.T) {
	var seen []limiter.SettleRequest
	h := newHarnessWith(t, baseYAML, func(m *limiter.Memory) limiter.Store {
		return &settleSpy{Store: m, seen: &seen}
	})
	x, _ := h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
	x.ResponseHeaders(jsonHeaders, false)
	x.ResponseBody([]byte(`{"id":"msg_1","type":"message","content":[]}`), true) // no usage
	x.Settle()
	x, _ = h.admit(post(pathMessages, tenantHeader("acme")), `{"model":"claude-unpriced-9","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`)
	calibRespond(t, x, 100)
	x, _ = h.admit(post(pathMessages, tenantHeader("acme")), sonnetBody)
	calibRespond(t, x, 100)
	if len(seen) != 3 {
		t.Fatalf("%d settles, want 3", len(seen))
	}
	for i, want := range []string{"", "", "claude-sonnet-4-5"} {
		if got := seen[i].Calibrate.Model; got != want {
			t.Errorf("settle %d calibrates %q, want %q (%+v)", i, got, want, seen[i].Calibrate)
		}
	}
	if c := seen[2].Calibrate; c.Measured != 100 || c.Estimated != inputEstimate(t, pathMessages, sonnetBody) {
		t.Errorf("sample %+v", c)
	}
}

type settleSpy struct {
	limiter.Store
	seen *[]limiter.SettleRequest
}

func (s *settleSpy) Settle(ctx context.Context, req limiter.SettleRequest) (limiter.SettleResult, error) {
	*s.seen = append(*s.seen, req)
	return s.Store.Settle(ctx, req)
}

// Two gates on one Redis share the calibration through their settles: what
// one learned, the other's first settle returns, and its next estimates use.
func TestCalibrationSharedThroughRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	cfg, err := policy.Parse([]byte(testIdentity + baseYAML[strings.Index(baseYAML, "policies:"):]))
	if err != nil {
		t.Fatal(err)
	}
	gate := func() *Gate {
		st, err := limiter.Open(limiter.OpenOptions{Redis: "redis://" + srv.Addr(), Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		g, err := New(Options{Config: policy.NewHolder(cfg), Store: st.Store})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	a, b := gate(), gate()
	w := &calibWorkload{rng: rand.New(rand.NewPCG(3, 4))}
	for range calibTrain {
		calibRequest(t, a, w, "acme")
	}
	// b has settled nothing: its first request is reserved raw, and its
	// settle returns the record a filled.
	raw, reserved, _ := calibRequest(t, b, w, "acme")
	if raw != reserved {
		t.Fatalf("b's first request reserved %d, raw %d", reserved, raw)
	}
	if f := b.calib.factor("acme", "claude-sonnet-4-5"); math.Abs(f-calibK) > 0.1 {
		t.Fatalf("b's factor after one settle %.3f, want the shared ≈%.1f", f, calibK)
	}
	u, c := calibEvaluate(t, b, w, "acme")
	checkCalibrated(t, u, c)
}
