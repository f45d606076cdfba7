package load

import (
	"context"
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
)

// exchangeTiming collects the phase latencies of one exchange. sim opens the
// gRPC stream with a context derived from Do's (values kept), which is how
// the interceptor finds it.
type exchangeTiming struct {
	sse     bool // the response streams: body messages are SSE chunks
	mu      sync.Mutex
	pending []pendingMsg
	samples []Sample
}

type pendingMsg struct {
	series string
	sent   time.Time
}

type timingKey struct{}

func withTiming(ctx context.Context, t *exchangeTiming) context.Context {
	return context.WithValue(ctx, timingKey{}, t)
}

// TimingInterceptor is a grpc.StreamClientInterceptor that times every
// ext_proc message from SendMsg to the RecvMsg of its answer. Streams whose
// context carries no timing record pass through untouched.
func TimingInterceptor(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	t, _ := ctx.Value(timingKey{}).(*exchangeTiming)
	if t == nil {
		return cs, nil
	}
	return &timedStream{ClientStream: cs, t: t}, nil
}

type timedStream struct {
	grpc.ClientStream
	t *exchangeTiming
}

func (s *timedStream) SendMsg(m any) error {
	if r, ok := m.(*extprocv3.ProcessingRequest); ok {
		s.t.sent(seriesOf(r, s.t.sse), time.Now())
	}
	return s.ClientStream.SendMsg(m)
}

func (s *timedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil {
		if r, ok := m.(*extprocv3.ProcessingResponse); ok {
			s.t.received(r, time.Now())
		}
	}
	return err
}

func (t *exchangeTiming) sent(series string, at time.Time) {
	t.mu.Lock()
	t.pending = append(t.pending, pendingMsg{series, at})
	t.mu.Unlock()
}

// received matches a response to the oldest unanswered message: the
// processor answers in order on a stream. An ImmediateResponse answers the
// oldest and ends the exchange, so the rest are dropped unmeasured.
func (t *exchangeTiming) received(r *extprocv3.ProcessingResponse, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.pending) == 0 {
		return // an answer nothing asked for (spurious): sim reports it
	}
	p := t.pending[0]
	t.pending = t.pending[1:]
	if r.GetImmediateResponse() != nil {
		t.samples = append(t.samples, Sample{SeriesImmediate, at.Sub(p.sent)})
		t.pending = nil
		return
	}
	if r.GetResponse() == nil {
		// override_message_timeout only: the message is still unanswered.
		t.pending = append([]pendingMsg{p}, t.pending...)
		return
	}
	t.samples = append(t.samples, Sample{p.series, at.Sub(p.sent)})
}

func (t *exchangeTiming) take() []Sample {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.samples
	t.samples = nil
	return s
}

// seriesOf names the series a request message belongs to; a response body
// message is an SSE chunk on a streamed exchange and a whole JSON body
// otherwise.
func seriesOf(r *extprocv3.ProcessingRequest, sse bool) string {
	switch r.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return SeriesRequestHeaders
	case *extprocv3.ProcessingRequest_RequestBody:
		return SeriesRequestBody
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return SeriesResponseHeaders
	case *extprocv3.ProcessingRequest_ResponseBody:
		if sse {
			return SeriesSSEChunk
		}
		return SeriesResponseJSON
	}
	return "other"
}
