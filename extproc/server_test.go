package extproc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/extproc/observe"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// testConfig: one in-flight request per tenant, so a lease left behind by a
// stream shows as a 429 on the tenant's next request.
const testConfig = `
identity:
  from:
    - header: x-tenant-id   # the test plays the mesh, which sets it
      trusted: true
  unknown: default:anonymous
  unconfigured: own
policies:
  default:
    limits: {requests_per_minute: 1000, tokens_per_minute: 1000000, concurrent: 1}
    output_reservation: 1024
    budgets: [{window: day, usd: 100, timezone: UTC}]
  routed:
    limits: {concurrent: 1}
    budgets: [{window: day, usd: 5, timezone: UTC}]
`

// claude-sonnet-4-5 in nano-USD per token ($3 and $15 per million, from
// https://docs.anthropic.com/en/docs/about-claude/pricing), written out so
// a pricing bug cannot cancel itself out.
const inNano, outNano = 3000, 15000

const (
	messagesBody = `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hello there"}]}`
	streamBody   = `{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hello there"}]}`
	// jsonResponse is an Anthropic Messages answer with 12 input and 7
	// output tokens (https://docs.anthropic.com/en/api/messages).
	jsonResponse = `{"model":"claude-sonnet-4-5","id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant",` +
		`"content":[{"type":"text","text":"Hi! How can I help?"}],"stop_reason":"end_turn","stop_sequence":null,` +
		`"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":7,"service_tier":"standard"}}`
	jsonResponseCost = 12*inNano + 7*outNano
)

// sseEvents is an Anthropic streaming answer, event by event
// (https://docs.anthropic.com/en/docs/build-with-claude/streaming): 1000
// input tokens on message_start, 9 output tokens on message_delta.
var sseEvents = []string{
	"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":1000,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n",
	"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
	"event: ping\ndata: {\"type\": \"ping\"}\n\n",
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", world\"}}\n\n",
	"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
	"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":1000,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":9}}\n\n",
	"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
}

const sseCost = 1000*inNano + 9*outNano

// inputEstimate is what a request admitted but never answered is charged:
// the dialect's input estimate, no output.
func inputEstimate(t testing.TB, body string) int64 {
	t.Helper()
	r, err := anthropic.ParseRequest([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return r.InputTokens * inNano
}

// tripwire is the gate's Observer: the real metrics, except that an armed
// point panics once, as a bug there would.
type tripwire struct {
	*observe.Metrics
	armed atomic.Value // string: the point that panics next
}

func (o *tripwire) trip(point string) bool {
	return o.armed.CompareAndSwap(point, "")
}

func (o *tripwire) ProviderResponse(dialect string, status int) {
	if o.trip("provider_response") {
		panic("tripwire: ProviderResponse")
	}
	o.Metrics.ProviderResponse(dialect, status)
}

func (o *tripwire) StoreCall(op string, took time.Duration, err error) {
	if o.trip("store_call_" + op) {
		panic("tripwire: StoreCall " + op)
	}
	o.Metrics.StoreCall(op, took, err)
}

func (o *tripwire) Outcome(out *gate.Outcome) {
	if o.trip("outcome_" + string(out.Result)) {
		panic("tripwire: Outcome " + string(out.Result))
	}
	o.Metrics.Outcome(out)
}

// harness is an ext_proc Server on a loopback gRPC listener, over a memory
// store, with a client that plays Envoy.
type harness struct {
	t      *testing.T
	client extprocv3.ExternalProcessorClient
	reg    *prometheus.Registry
	store  *limiter.Memory
	cfg    *policy.Config
	obs    *tripwire
}

// maxTestMessage is the test server's gRPC receive limit, small so a
// message over it is cheap to send.
const maxTestMessage = 1 << 20

func newHarness(t *testing.T) *harness {
	t.Helper()
	cfg, err := policy.Parse([]byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, reg: prometheus.NewRegistry(), store: limiter.NewMemory(limiter.MemoryOptions{}), cfg: cfg}
	t.Cleanup(func() { _ = h.store.Close() })
	h.obs = &tripwire{Metrics: observe.NewMetrics(h.reg)}
	h.obs.armed.Store("")
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	g, err := gate.New(gate.Options{Config: policy.NewHolder(cfg), Store: h.store, Observer: h.obs, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(Options{Gate: g, Metrics: h.obs.Metrics, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(maxTestMessage))
	extprocv3.RegisterExternalProcessorServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h.client = extprocv3.NewExternalProcessorClient(conn)
	return h
}

// session is one ext_proc stream, the client side.
type session struct {
	t      *testing.T
	stream extprocv3.ExternalProcessor_ProcessClient
	cancel context.CancelFunc
}

func (h *harness) open() *session {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	h.t.Cleanup(cancel)
	st, err := h.client.Process(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	return &session{t: h.t, stream: st, cancel: cancel}
}

// send sends one message and returns the server's answer to it, or the
// error that ended the stream instead.
func (s *session) send(req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
	// Send reports io.EOF when the server already ended the stream; Recv
	// then returns the status it ended with.
	if err := s.stream.Send(req); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return s.stream.Recv()
}

// must sends and fails the test unless an answer comes.
func (s *session) must(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	s.t.Helper()
	resp, err := s.send(req)
	if err != nil {
		s.t.Fatalf("%s: %v", kindOf(req), err)
	}
	return resp
}

// closeSend half-closes, as Envoy's graceful close does, and waits for the
// server to end the stream with OK: by then its request is settled.
func (s *session) closeSend() {
	s.t.Helper()
	if err := s.stream.CloseSend(); err != nil {
		s.t.Fatal(err)
	}
	if resp, err := s.stream.Recv(); !errors.Is(err, io.EOF) {
		s.t.Fatalf("after CloseSend: %v %v, want the stream to end with OK", resp, err)
	}
}

// kindOf names the oneof a message carries.
func kindOf(m proto.Message) string {
	msg := m.ProtoReflect()
	od := msg.Descriptor().Oneofs().ByName("request")
	if od == nil {
		od = msg.Descriptor().Oneofs().ByName("response")
	}
	if fd := msg.WhichOneof(od); fd != nil {
		return string(fd.Name())
	}
	return "none"
}

// activeStreams reads tokenwarden_active_streams: it drops after a stream's
// request is settled, so 0 means every settle ran.
func (h *harness) activeStreams() float64 {
	return gather(h.t, h.reg, "tokenwarden_active_streams", "")
}

func (h *harness) streamErrors(reason string) float64 {
	return gather(h.t, h.reg, "tokenwarden_stream_errors_total", reason)
}

// gather reads one series of a gauge or counter; reason filters on the
// reason label when not empty.
func gather(t testing.TB, reg prometheus.Gatherer, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := reason == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					match = true
				}
			}
			if match {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// waitIdle waits, boundedly, until no stream is open on the server.
func (h *harness) waitIdle() {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.activeStreams() != 0 {
		if time.Now().After(deadline) {
			h.t.Fatalf("%v streams still open", h.activeStreams())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// budget is the tenant's day window in the store.
func (h *harness) budget(tenant string) limiter.BudgetState {
	h.t.Helper()
	p, _ := h.cfg.Policy(tenant, "")
	st, err := h.store.Budgets(context.Background(), tenant, p.LimiterBudgets(time.Now()))
	if err != nil {
		h.t.Fatal(err)
	}
	if len(st) != 1 {
		h.t.Fatalf("budgets of %s: %+v", tenant, st)
	}
	return st[0]
}

// admitOK runs a whole, ordinary exchange for tenant and reports whether its
// body was admitted; with concurrent: 1 a lease left behind makes it a 429.
func (h *harness) admitOK(tenant string) bool {
	h.t.Helper()
	s := h.open()
	s.must(requestHeaders(tenant, filterv3.ProcessingMode_BUFFERED))
	resp := s.must(requestBody(messagesBody, true))
	if ir := resp.GetImmediateResponse(); ir != nil {
		s.cancel()
		h.waitIdle()
		return false
	}
	s.must(responseHeaders(200, "application/json", false))
	s.must(responseBody(jsonResponse, true))
	s.closeSend()
	return true
}

// Messages as Envoy builds them
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto):
// lower-case keys, values in raw_value, protocol_config on the first message
// only.

func hv(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, RawValue: []byte(v)} }

func requestHeaders(tenant string, mode filterv3.ProcessingMode_BodySendMode, extra ...*corev3.HeaderValue) *extprocv3.ProcessingRequest {
	hs := append([]*corev3.HeaderValue{
		hv(":method", "POST"), hv(":path", "/v1/messages"), hv(":scheme", "https"), hv(":authority", "api.anthropic.com"),
		hv("content-type", "application/json"), hv("anthropic-version", "2023-06-01"),
		hv("x-api-key", "sk-ant-test"), hv("x-request-id", "7c1e0b5e-3f0e-4a43-9f5c-0d3b2b6a9e11"),
	}, extra...)
	if tenant != "" {
		hs = append(hs, hv("x-tenant-id", tenant))
	}
	return &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: &corev3.HeaderMap{Headers: hs},
		}},
		ProtocolConfig: &extprocv3.ProtocolConfiguration{RequestBodyMode: mode, ResponseBodyMode: filterv3.ProcessingMode_BUFFERED},
	}
}

func requestBody(b string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte(b), EndOfStream: eos}}}
}

func requestTrailers() *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{
		Trailers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{hv("x-checksum", "abc")}},
	}}}
}

func responseHeaders(code int, contentType string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			hv(":status", strconv.Itoa(code)), hv("content-type", contentType), hv("request-id", "req_011CTest"),
		}},
		EndOfStream: eos,
	}}}
}

func responseBody(b string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte(b), EndOfStream: eos}}}
}

func responseTrailers() *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{
		Trailers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{hv("grpc-status", "0")}},
	}}}
}

// TestPanicGuard: a panic in the gate after admission (here the Observer, at
// response headers) ends only its stream, with Internal; it is counted; the
// request is settled at its estimate, so its lease is free for the tenant's
// next request; and the server goes on serving.
func TestPanicGuard(t *testing.T) {
	h := newHarness(t)
	s := h.open()
	s.must(requestHeaders("p", filterv3.ProcessingMode_BUFFERED))
	if resp := s.must(requestBody(messagesBody, true)); resp.GetRequestBody() == nil {
		t.Fatalf("body: %v, want it admitted", resp)
	}
	if b := h.budget("p"); b.Reserved == 0 {
		t.Fatalf("admitted request reserves nothing: %+v", b)
	}
	h.obs.armed.Store("provider_response")
	_, err := s.send(responseHeaders(200, "application/json", false))
	if status.Code(err) != codes.Internal || !strings.Contains(status.Convert(err).Message(), "internal error") {
		t.Fatalf("stream ended with %v, want Internal", err)
	}
	if got := h.streamErrors(observe.StreamPanic); got != 1 {
		t.Fatalf("stream_errors_total{reason=panic} = %v, want 1", got)
	}
	if got := h.streamErrors(observe.StreamProtocol); got != 0 {
		t.Fatalf("stream_errors_total{reason=protocol} = %v, want 0", got)
	}
	// The settle runs before the stream's status is sent: no wait needed.
	if b, want := h.budget("p"), inputEstimate(t, messagesBody); b.Reserved != 0 || b.Spent != want {
		t.Fatalf("after the panic: %+v, want reserved 0 and spent %d (the input estimate)", b, want)
	}
	if !h.admitOK("p") {
		t.Fatal("the next request of the tenant (concurrent: 1) was refused: the panicked stream kept its lease")
	}
	if b, want := h.budget("p"), inputEstimate(t, messagesBody)+jsonResponseCost; b.Reserved != 0 || b.Spent != want {
		t.Fatalf("after a normal request: %+v, want spent %d", b, want)
	}
	if got := h.streamErrors(observe.StreamPanic); got != 1 {
		t.Fatalf("stream_errors_total{reason=panic} = %v after a normal stream", got)
	}
}

// TestPanicAfterAdmitReleasesReservation: a panic right after the store
// admitted (the Observer's StoreCall for the admission) must not lose the
// reservation: the stream's end settles it, so the tenant's one slot is
// free at once rather than after its lease expires.
func TestPanicAfterAdmitReleasesReservation(t *testing.T) {
	h := newHarness(t)
	s := h.open()
	s.must(requestHeaders("q", filterv3.ProcessingMode_BUFFERED))
	h.obs.armed.Store("store_call_admit")
	_, err := s.send(requestBody(messagesBody, true))
	if status.Code(err) != codes.Internal {
		t.Fatalf("stream ended with %v, want Internal", err)
	}
	if got := h.streamErrors(observe.StreamPanic); got != 1 {
		t.Fatalf("stream_errors_total{reason=panic} = %v, want 1", got)
	}
	if b, want := h.budget("q"), inputEstimate(t, messagesBody); b.Reserved != 0 || b.Spent != want {
		t.Fatalf("after the panic: %+v, want reserved 0 and spent %d (the input estimate)", b, want)
	}
	if !h.admitOK("q") {
		t.Fatal("the next request of the tenant (concurrent: 1) was refused: the panicked stream kept its lease")
	}
}

// TestPanicWhileEnding: a panic while a stream ends (here the Observer, as
// the aborted request's outcome is recorded) is contained too: counted, the
// request still settled at its estimate, and the server serves the next
// stream.
func TestPanicWhileEnding(t *testing.T) {
	h := newHarness(t)
	s := h.open()
	s.must(requestHeaders("r", filterv3.ProcessingMode_BUFFERED))
	s.must(requestBody(messagesBody, true))
	h.obs.armed.Store("outcome_" + string(gate.ResultEstimated))
	s.closeSend()
	if got := h.streamErrors(observe.StreamPanic); got != 1 {
		t.Fatalf("stream_errors_total{reason=panic} = %v, want 1", got)
	}
	if b, want := h.budget("r"), inputEstimate(t, messagesBody); b.Reserved != 0 || b.Spent != want {
		t.Fatalf("after the panic: %+v, want reserved 0 and spent %d (the input estimate)", b, want)
	}
	if !h.admitOK("r") {
		t.Fatal("the next request of the tenant (concurrent: 1) was refused: the stream that panicked while ending kept its lease")
	}
}

// TestPanicAfterMeteringChargesUsage: a panic as a metered request's
// outcome is recorded (the Observer, at the last body chunk) still charges
// what the provider reported: the stream's end settles with the measured
// cost, not with nothing.
func TestPanicAfterMeteringChargesUsage(t *testing.T) {
	h := newHarness(t)
	s := h.open()
	s.must(requestHeaders("m", filterv3.ProcessingMode_BUFFERED))
	s.must(requestBody(messagesBody, true))
	s.must(responseHeaders(200, "application/json", false))
	h.obs.armed.Store("outcome_" + string(gate.ResultOK))
	if _, err := s.send(responseBody(jsonResponse, true)); status.Code(err) != codes.Internal {
		t.Fatalf("stream ended with %v, want Internal", err)
	}
	if b := h.budget("m"); b.Reserved != 0 || b.Spent != jsonResponseCost {
		t.Fatalf("after the panic: %+v, want reserved 0 and spent %d (the measured usage)", b, jsonResponseCost)
	}
	if !h.admitOK("m") {
		t.Fatal("the next request of the tenant (concurrent: 1) was refused: the panicked stream kept its lease")
	}
}

func TestNewServerRequiresGateAndMetrics(t *testing.T) {
	if _, err := NewServer(Options{}); err == nil {
		t.Fatal("NewServer without Gate and Metrics: no error")
	}
}
