package load

import (
	"context"
	"strings"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
)

func TestOpenLoopRunsEverySlotOfTheSchedule(t *testing.T) {
	f := serveInMemory(t, Noop{})
	mix := DefaultMix
	mix.MaxBody = 16 << 10
	w, err := NewWorkload(mix, 3, 64)
	if err != nil {
		t.Fatal(err)
	}
	sc := Scenario{Name: "t", Rate: 200, Warmup: 250 * time.Millisecond, Duration: time.Second, Mix: mix, Seed: 1}
	res, err := Run(context.Background(), sc, Target{Name: "noop", Filter: f}, w)
	if err != nil {
		t.Fatal(err)
	}
	// Slots i/Rate in [Warmup, Warmup+Duration): exactly Rate×Duration of
	// them are measured, however long each took.
	if res.Exchanges != 200 {
		t.Errorf("measured %d exchanges, want the 200 scheduled slots", res.Exchanges)
	}
	if res.Errors != 0 || res.GateTimeouts != 0 {
		t.Fatalf("errors %d (%v), gate timeouts %d", res.Errors, res.ErrorSamples, res.GateTimeouts)
	}
	ex := res.Latency[SeriesExchange]
	if ex.N != 200 || ex.P50 <= 0 || ex.P50 > ex.P99 || ex.P99 > ex.Max {
		t.Errorf("exchange latency %+v", ex)
	}
	// Every exchange sends request headers, its body and response headers;
	// JSON exchanges one body, SSE exchanges several chunks.
	for _, s := range []string{SeriesRequestHeaders, SeriesRequestBody, SeriesResponseHeaders} {
		if n := res.Latency[s].N; n != 200 {
			t.Errorf("%s: %d samples, want 200", s, n)
		}
	}
	json, chunks := res.Latency[SeriesResponseJSON].N, res.Latency[SeriesSSEChunk].N
	if json == 0 || json == 200 || chunks <= 3*(200-json) {
		t.Errorf("%d JSON bodies and %d SSE chunks: SSE bodies are not streamed in many chunks", json, chunks)
	}
}

func TestClosedLoopKeepsConcurrency(t *testing.T) {
	f := serveInMemory(t, Noop{})
	mix := DefaultMix
	mix.MaxBody = 8 << 10
	w, err := NewWorkload(mix, 4, 32)
	if err != nil {
		t.Fatal(err)
	}
	sc := Scenario{Name: "t", Concurrency: 4, Duration: 300 * time.Millisecond, Mix: mix}
	res, err := Run(context.Background(), sc, Target{Name: "noop", Filter: f}, w)
	if err != nil {
		t.Fatal(err)
	}
	if res.Exchanges < 4 || res.Errors != 0 || res.Throughput <= 0 {
		t.Errorf("exchanges %d, errors %d (%v), throughput %v", res.Exchanges, res.Errors, res.ErrorSamples, res.Throughput)
	}
}

// stubborn keeps SSE responses BUFFERED and rewrites JSON bodies: the harness
// must count both as problems rather than measure them as successes.
type stubborn struct{ Noop }

func (stubborn) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		resp := NoopResponse(req)
		resp.ModeOverride = nil
		if b := req.GetResponseBody(); b != nil && b.GetEndOfStream() {
			resp = proto.Clone(resp).(*extprocv3.ProcessingResponse)
			resp.GetResponseBody().Response = &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{
				Mutation: &extprocv3.BodyMutation_Body{Body: []byte("{}")}}}
		}
		if err := stream.Send(resp); err != nil {
			return nil
		}
	}
}

func TestRunCountsWrongAnswers(t *testing.T) {
	f := serveInMemory(t, stubborn{})
	mix := DefaultMix
	mix.MaxBody = 4 << 10
	mix.SSE = 0
	w, err := NewWorkload(mix, 5, 8)
	if err != nil {
		t.Fatal(err)
	}
	sc := Scenario{Name: "t", Rate: 50, Duration: 200 * time.Millisecond, Mix: mix}
	res, err := Run(context.Background(), sc, Target{Name: "stubborn", Filter: f}, w)
	if err != nil {
		t.Fatal(err)
	}
	if res.Exchanges != 10 || res.Errors != 10 {
		t.Fatalf("exchanges %d, errors %d: rewritten bodies must all be errors", res.Exchanges, res.Errors)
	}
	// sim fails the exchange (content-length no longer matches), as Envoy would.
	if len(res.ErrorSamples) == 0 || !strings.Contains(res.ErrorSamples[0], "500") {
		t.Errorf("error samples %v", res.ErrorSamples)
	}
	if _, ok := res.Latency[SeriesExchange]; ok {
		t.Error("failed exchanges were recorded as latencies")
	}
}

func TestRunRejectsEmptyScenario(t *testing.T) {
	if _, err := Run(context.Background(), Scenario{Duration: time.Second}, Target{}, nil); err == nil {
		t.Error("a scenario with neither Rate nor Concurrency ran")
	}
	if _, err := Run(context.Background(), Scenario{Rate: 1}, Target{}, nil); err == nil {
		t.Error("a scenario without Duration ran")
	}
}

func TestTimingMatchesAnswersInOrder(t *testing.T) {
	base := time.Unix(1000, 0)
	at := func(us int) time.Time { return base.Add(time.Duration(us) * time.Microsecond) }
	body := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	tm := &exchangeTiming{sse: true}
	tm.sent(SeriesSSEChunk, at(0))
	tm.sent(SeriesSSEChunk, at(10))
	tm.sent(SeriesSSEChunk, at(20))
	tm.received(&extprocv3.ProcessingResponse{}, at(25)) // override_message_timeout only: not an answer
	tm.received(body, at(30))
	tm.received(body, at(35))
	tm.received(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{}}}, at(50))
	tm.received(body, at(60)) // nothing pending any more: ignored
	got := tm.take()
	want := []Sample{{SeriesSSEChunk, 30 * time.Microsecond}, {SeriesSSEChunk, 25 * time.Microsecond}, {SeriesImmediate, 30 * time.Microsecond}}
	if len(got) != len(want) {
		t.Fatalf("samples %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("sample %d = %v, want %v", i, got[i], want[i])
		}
	}
}
