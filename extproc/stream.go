package extproc

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/extproc/observe"
)

// state is where one ext_proc stream is. Envoy's messages move it forward
// only; a message that makes no sense in the current state is either
// answered unchanged (a repeat Envoy is known to send, a phase the request
// no longer needs) or refused with a gRPC error that says why.
type state uint8

const (
	awaitRequestHeaders state = iota // nothing received yet
	awaitRequestBody                 // request headers answered; the body follows
	forwarded                        // the request went upstream; its answer is awaited
	responding                       // response headers answered; the body is being metered
	passingThrough                   // not governed: every later message is answered unchanged
	finished                         // answered locally or metered: later messages answered unchanged
)

var stateNames = [...]string{"await_request_headers", "await_request_body", "forwarded", "responding", "passing_through", "finished"}

func (s state) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// Protocol errors: messages Envoy does not send in this order or form.
var (
	errNoRequestHeaders = status.Error(codes.FailedPrecondition,
		"tokenwarden: the stream must start with request_headers (set the ext_proc filter's processing_mode.request_header_mode to SEND)")
	errRepeatedHeaders = status.Error(codes.FailedPrecondition,
		"tokenwarden: request_headers received twice on one stream")
	errUnknownMessage = status.Error(codes.InvalidArgument,
		"tokenwarden: ProcessingRequest carries no message tokenwarden knows")
	// errGone ends a stream whose client went away while its request
	// waited in the queue: there is nothing to answer.
	errGone = status.Error(codes.Canceled, "tokenwarden: the client went away while its request waited")
)

// stream is the state of one ext_proc stream. One goroutine uses it.
type stream struct {
	gate    *gate.Gate
	metrics *observe.Metrics
	log     *slog.Logger
	ctx     context.Context
	state   state
	x       *gate.Exchange
	// send sends a message that is not the answer to one (the
	// override_message_timeout before a wait).
	send func(*extprocv3.ProcessingResponse) error

	// wholeBody reports that a request body message holds the whole body
	// even without end_of_stream (BUFFERED with trailers).
	wholeBody bool
	// chunks assembles a STREAMED request body; each chunk is held back
	// (cleared) and the whole body goes with the last chunk's answer.
	chunks   []byte
	streamed bool
	// call is the message onOwnStack's helper goroutine is handling.
	call helperCall
}

// handle answers one message from Envoy. settle reports that the request
// is metered and its reservation is to be settled once the answer is sent.
// The request's headers and body and the response headers are handled on
// a goroutine of their own (onOwnStack): the body's work is the deepest,
// and the headers' take some streams past 8 KB too (the slow-streams
// load's RSS peak: 92 MB with the body alone on a helper, 86 MB with all
// three). The response body's chunks, the many messages of a slow stream,
// are not: metering a chunk is shallow, and handing a call to a helper
// costs a goroutine switch each way.
func (st *stream) handle(req *extprocv3.ProcessingRequest) (resp *extprocv3.ProcessingResponse, settle bool, err error) {
	switch req.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders, *extprocv3.ProcessingRequest_RequestBody,
		*extprocv3.ProcessingRequest_ResponseHeaders:
		return st.onOwnStack(req)
	}
	return st.dispatch(req)
}

// dispatch is handle on the goroutine it runs on.
func (st *stream) dispatch(req *extprocv3.ProcessingRequest) (resp *extprocv3.ProcessingResponse, settle bool, err error) {
	start := time.Now()
	var phase string
	switch r := req.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		phase = observe.PhaseRequestHeaders
		resp, err = st.requestHeaders(r.RequestHeaders, req)
	case *extprocv3.ProcessingRequest_RequestBody:
		phase = observe.PhaseRequestBody
		resp, err = st.requestBody(r.RequestBody)
	case *extprocv3.ProcessingRequest_RequestTrailers:
		resp, err = st.requestTrailers()
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		phase = observe.PhaseResponseHeaders
		resp, settle, err = st.responseHeaders(r.ResponseHeaders)
	case *extprocv3.ProcessingRequest_ResponseBody:
		phase = observe.PhaseResponseBody
		resp, settle, err = st.responseBody(r.ResponseBody)
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		resp, settle, err = st.responseTrailers()
	default:
		return nil, false, errUnknownMessage
	}
	if phase != "" {
		st.metrics.Phase(phase, time.Since(start))
	}
	return resp, settle, err
}

// onOwnStack dispatches req on a goroutine of its own and waits for it.
// The request's work — the body's parse, edits and admission through the
// store's client above all — is the deepest of an exchange and takes a
// goroutine's stack past 8 KB; on the stream's own goroutine that stack
// would stay at 16 KB for the rest of the exchange (the collector halves a
// stack only when under a quarter of it is in use, and a stream parked in
// gRPC's Recv uses more), which is what a slow stream waiting on its
// response holds: with 1,000 of them, about 8 MB of stacks, and the
// processor's RSS over its 100 MB target. The deep stack is the helper's,
// which serves other streams' calls (helperPool). One helper runs a
// stream's call, and only while the stream's goroutine waits for it, so
// nothing uses the stream concurrently; a panic in it is carried back and
// raised again here, under the stream's own guard, with the helper's stack
// for the log. The call's values live in the stream (st.call), not in a
// closure's captured variables, which would be allocated for every call.
func (st *stream) onOwnStack(req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, bool, error) {
	c := &st.call
	c.req = req
	c.done.Add(1)
	helpers.run(st)
	c.done.Wait()
	resp, settle, err, p := c.resp, c.settle, c.err, c.panicked
	c.req, c.resp, c.err, c.panicked = nil, nil, nil, nil // the answer is not the stream's to keep
	if p != nil {
		panic(p)
	}
	return resp, settle, err
}

// helpers are the goroutines onOwnStack hands calls to.
var helpers = helperPool{calls: make(chan *stream)}

// helperPool keeps up to maxIdleHelpers helper goroutines parked between
// calls. A fresh goroutine for every call started on a small stack and
// grew it by copying on each: runtime.newstack was 8% of the processor's
// CPU in the small-JSON load (pprof); a parked helper keeps its grown
// stack. A call that finds none parked starts one, which parks after it
// if there is room; the pool never makes a call wait.
type helperPool struct {
	calls  chan *stream
	parked atomic.Int32 // helpers that park after their call, at most maxIdleHelpers
}

// maxIdleHelpers bounds the parked helpers: 64 stacks of 16 KB, about as
// many as exchanges do their deep work at once on a busy processor.
const maxIdleHelpers = 64

func (p *helperPool) run(st *stream) {
	select {
	case p.calls <- st:
		return
	default:
	}
	if p.parked.Add(1) > maxIdleHelpers {
		p.parked.Add(-1)
		go st.runCall()
		return
	}
	go p.helper(st)
}

// helper runs first's call, then parks for the next ones. first is
// dropped before parking: a parked helper keeps no stream alive.
func (p *helperPool) helper(first *stream) {
	first.runCall()
	first = nil
	for st := range p.calls {
		st.runCall()
	}
}

// runCall is onOwnStack's helper goroutine.
func (st *stream) runCall() {
	c := &st.call
	defer c.done.Done()
	defer func() {
		if v := recover(); v != nil {
			c.panicked = &helperPanic{value: v, stack: debug.Stack()}
		}
	}()
	c.resp, c.settle, c.err = st.dispatch(c.req)
}

// helperCall is one message handled by onOwnStack, and its answer.
type helperCall struct {
	done     sync.WaitGroup
	req      *extprocv3.ProcessingRequest
	resp     *extprocv3.ProcessingResponse
	settle   bool
	err      error
	panicked *helperPanic
}

// helperPanic is a panic of onOwnStack's helper goroutine, raised again on the stream's goroutine; stack is where it happened.
type helperPanic struct {
	value any
	stack []byte
}

func (p *helperPanic) String() string { return fmt.Sprint(p.value) }

func (st *stream) requestHeaders(h *extprocv3.HttpHeaders, req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
	if st.state != awaitRequestHeaders {
		return nil, errRepeatedHeaders
	}
	env := envoyContext{attrs: req.GetAttributes()[contract.AttributesKey], md: req.GetMetadataContext()}
	routePolicy, _ := env.Attribute(contract.PolicyAttribute)
	routeLane, _ := env.Attribute(contract.LaneAttribute)
	x, v := st.gate.Begin(st.ctx, gate.Request{
		Headers:     envoyHeaders(h.GetHeaders().GetHeaders()),
		Envoy:       env,
		RoutePolicy: routePolicy,
		RouteLane:   routeLane,
		EndOfStream: h.GetEndOfStream(),
	})
	st.x = x
	switch {
	case v.PassThrough:
		st.state = passingThrough
		return requestHeadersAnswer(v.Edits, passThroughMode), nil
	case v.Reply != nil:
		st.state = finished
		return replyAnswer(v.Reply, x.Outcome()), nil
	case v.ResponseOnly:
		st.state = forwarded
		return requestHeadersAnswer(v.Edits, nil), nil
	}
	st.state = awaitRequestBody
	pc := req.GetProtocolConfig()
	if pc.GetRequestBodyMode() == filterv3.ProcessingMode_STREAMED {
		// A body Envoy would stream chunk by chunk is asked for whole, when
		// the filter allows overrides; if it does not, requestBody copes
		// with chunks. Whether the override is honoured is not known, so a
		// body message without end_of_stream is taken as a chunk.
		return requestHeadersAnswer(v.Edits, &filterv3.ProcessingMode{
			RequestBodyMode:  filterv3.ProcessingMode_BUFFERED,
			ResponseBodyMode: pc.GetResponseBodyMode(),
		}), nil
	}
	// BUFFERED: the one body message holds the whole body; it lacks
	// end_of_stream only when trailers follow.
	st.wholeBody = pc.GetRequestBodyMode() == filterv3.ProcessingMode_BUFFERED
	return requestHeadersAnswer(v.Edits, nil), nil
}

func (st *stream) requestBody(b *extprocv3.HttpBody) (*extprocv3.ProcessingResponse, error) {
	switch st.state {
	case awaitRequestHeaders:
		return nil, errNoRequestHeaders
	case awaitRequestBody:
	default:
		// Passed through, answered, or a repeated final body (Envoy has been
		// seen to send one twice): the body goes on as it is.
		return bodyAnswer(gate.BodyVerdict{}), nil
	}
	if !b.GetEndOfStream() && !st.wholeBody {
		st.streamed = true
		if len(st.chunks)+len(b.GetBody()) > gate.MaxRequestBody {
			st.state = finished
			return replyAnswer(st.x.BodyTooLarge(), st.x.Outcome()), nil
		}
		st.chunks = append(st.chunks, b.GetBody()...)
		return clearChunkAnswer(), nil
	}
	body := b.GetBody()
	if st.streamed {
		st.chunks = append(st.chunks, body...)
		body = st.chunks
	}
	v := st.x.Body(body)
	if v.Wait != nil {
		if v.Wait.Extend > 0 {
			// Envoy answers 504 when a message waits longer than its
			// message_timeout; it restarts the timer once per message at the
			// processor's request, and that message is not the answer
			// (ProcessingResponse.override_message_timeout,
			// https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto).
			if err := st.send(timeoutAnswer(v.Wait.Extend)); err != nil {
				st.x.Leave()
				return nil, errGone
			}
		}
		v = st.x.Wait()
		if v.Gone {
			st.state = finished
			return nil, errGone
		}
	}
	if v.Reply != nil {
		st.state = finished
		return replyAnswer(v.Reply, st.x.Outcome()), nil
	}
	st.state = forwarded
	if st.streamed {
		// Every earlier chunk was cleared; this answer carries the whole body.
		v.BodyChanged = true
	}
	return bodyAnswer(v), nil
}

func (st *stream) requestTrailers() (*extprocv3.ProcessingResponse, error) {
	switch st.state {
	case awaitRequestHeaders:
		return nil, errNoRequestHeaders
	case awaitRequestBody:
		if st.streamed {
			// The chunks were cleared and a trailers answer cannot carry a
			// body: the request cannot be forwarded as it was sent.
			st.state = finished
			return replyAnswer(st.x.Unsupported("a streamed request body that ends in trailers cannot be forwarded; configure request_body_mode BUFFERED or allow_mode_override"), st.x.Outcome()), nil
		}
	}
	return requestTrailersAnswer(), nil
}

func (st *stream) responseHeaders(h *extprocv3.HttpHeaders) (*extprocv3.ProcessingResponse, bool, error) {
	switch st.state {
	case awaitRequestHeaders:
		return nil, false, errNoRequestHeaders
	case awaitRequestBody:
		// The upstream answered before the request body was complete: this
		// request was never admitted and there is nothing to meter.
		st.state = finished
		return responseHeadersAnswer(gate.ResponseVerdict{}, nil), false, nil
	case forwarded:
	default:
		return responseHeadersAnswer(gate.ResponseVerdict{}, nil), false, nil
	}
	v := st.x.ResponseHeaders(envoyHeaders(h.GetHeaders().GetHeaders()), h.GetEndOfStream())
	if v.Done {
		st.state = finished
		return responseHeadersAnswer(v, st.x.Outcome()), true, nil
	}
	st.state = responding
	return responseHeadersAnswer(v, nil), false, nil
}

func (st *stream) responseBody(b *extprocv3.HttpBody) (*extprocv3.ProcessingResponse, bool, error) {
	switch st.state {
	case awaitRequestHeaders:
		return nil, false, errNoRequestHeaders
	case awaitRequestBody:
		// As at response headers: with response_header_mode SKIP the body is
		// the first sign that the upstream answered, and a request body
		// completed after it is not admitted.
		st.state = finished
		return chunkAnswer(gate.ChunkVerdict{}, nil), false, nil
	case forwarded, responding:
	default:
		return chunkAnswer(gate.ChunkVerdict{}, nil), false, nil
	}
	st.state = responding
	v := st.x.ResponseBody(b.GetBody(), b.GetEndOfStream())
	if v.Done {
		st.state = finished
		return chunkAnswer(v, st.x.Outcome()), true, nil
	}
	return chunkAnswer(v, nil), false, nil
}

func (st *stream) responseTrailers() (*extprocv3.ProcessingResponse, bool, error) {
	switch st.state {
	case awaitRequestHeaders:
		return nil, false, errNoRequestHeaders
	case awaitRequestBody:
		// The upstream answered before the request body was complete.
		st.state = finished
	case forwarded, responding:
		// With trailers, no body message carries end_of_stream: the trailers
		// are the end of the response.
		if st.x.ResponseEnd() {
			st.state = finished
			return responseTrailersAnswer(st.x.Outcome()), true, nil
		}
	}
	return responseTrailersAnswer(nil), false, nil
}

// end runs when the stream ends, however it ends: the request is settled
// (estimated, if it never reached its end) on a context of its own. A panic
// here is contained too, and the settle is tried once more: Settle is a
// no-op unless the exchange is done and still holds its reservation, so it
// helps exactly when the panic came after the charge was fixed (an
// observer), and the store expires what is still not settled.
func (st *stream) end() {
	defer func() {
		if p := recover(); p != nil {
			st.metrics.StreamError(observe.StreamPanic)
			st.log.Error("processor panic while ending a stream; settling it again, else its reservation expires in the store", "panic", p)
			st.settleAgain()
		}
	}()
	st.x.Abort()
}

// settleAgain is end's second try; a panic in it is only logged.
func (st *stream) settleAgain() {
	defer func() {
		if p := recover(); p != nil {
			st.log.Error("processor panic while settling a stream again; its reservation expires in the store", "panic", p)
		}
	}()
	st.x.Settle()
}

// envoyContext reads what Envoy sent about a request beyond its headers:
// the attributes it evaluated (under the filter's one key) and the dynamic
// metadata of the forwarding namespaces.
type envoyContext struct {
	attrs *structpb.Struct
	md    *corev3.Metadata
}

// Attribute implements gate.Envoy: a string attribute, or a number or bool
// printed.
func (e envoyContext) Attribute(expr string) (string, bool) {
	return scalar(e.attrs.GetFields()[expr])
}

// Metadata implements gate.Envoy.
func (e envoyContext) Metadata(namespace string, path ...string) (string, bool) {
	st := e.md.GetFilterMetadata()[namespace]
	if st == nil {
		return "", false
	}
	v := structpb.NewStructValue(st)
	for _, p := range path {
		v = v.GetStructValue().GetFields()[p]
		if v == nil {
			return "", false
		}
	}
	return scalar(v)
}

func scalar(v *structpb.Value) (string, bool) {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return k.StringValue, k.StringValue != ""
	case *structpb.Value_NumberValue:
		if n := k.NumberValue; n == float64(int64(n)) {
			return strconv.FormatInt(int64(n), 10), true
		}
		return strconv.FormatFloat(k.NumberValue, 'f', -1, 64), true
	case *structpb.Value_BoolValue:
		return strconv.FormatBool(k.BoolValue), true
	}
	return "", false
}

// envoyHeaders reads an Envoy header map for the gate.
type envoyHeaders []*corev3.HeaderValue

// Get implements gate.Headers. Envoy sends raw_value with value empty
// (send_header_raw_value, on by default); value is read as a fallback for
// older configurations.
//
// The raw value is returned without a copy (an exchange reads about twenty
// headers, several more than once): protobuf-go decodes a bytes field into
// an array of its own, never into gRPC's receive buffer, and nothing writes
// to a received message, so the string is as immutable as a copy and keeps
// only that array alive.
func (h envoyHeaders) Get(name string) (string, bool) {
	for _, hv := range h {
		if hv.GetKey() == name {
			if len(hv.RawValue) > 0 {
				return unsafe.String(unsafe.SliceData(hv.RawValue), len(hv.RawValue)), true
			}
			return hv.Value, true
		}
	}
	return "", false
}
