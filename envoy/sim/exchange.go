package sim

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// attributesKey is the single key of ProcessingRequest.attributes
// (Filter::addAttributes in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
const attributesKey = "envoy.filters.http.ext_proc"

// Filter is one configured ext_proc filter. It is safe for concurrent use;
// every Do is an independent exchange with its own gRPC stream.
type Filter struct {
	client extprocv3.ExternalProcessorClient
	cfg    Config
	n      atomic.Uint64
	// hook, when set by in-package tests, observes loop events so tests can
	// order their actions without sleeping.
	hook func(event string)
}

// New returns a Filter that sends to client. It fails for configurations
// Envoy rejects or this package does not emulate (FULL_DUPLEX_STREAMED).
func New(client extprocv3.ExternalProcessorClient, cfg Config) (*Filter, error) {
	if client == nil {
		return nil, errors.New("sim: nil ExternalProcessorClient")
	}
	c, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	return &Filter{client: client, cfg: c}, nil
}

// Config returns the normalized configuration.
func (f *Filter) Config() Config { return f.cfg }

// Do runs one HTTP exchange: req through the processor, to upstream once the
// request headers continue, and the response back through the processor. It
// returns when the response headers leave the filter (or a local reply is
// generated); the body then streams through Response.Body. The error is
// non-nil only for an invalid request or when ctx ends before response
// headers; every protocol failure is a Response, as in Envoy.
func (f *Filter) Do(ctx context.Context, req *Request, upstream Upstream) (*Response, error) {
	if req == nil || upstream == nil {
		return nil, errors.New("sim: nil request or upstream")
	}
	if req.Method == "" || req.Path == "" {
		return nil, errors.New("sim: request needs Method and Path")
	}
	x := newExchange(ctx, f, req, upstream)
	go x.run()
	select {
	case <-x.head:
		return x.resp, nil
	case <-x.done:
		select {
		case <-x.head:
			return x.resp, nil
		default:
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("sim: exchange aborted before response headers: %w", err)
		}
		return nil, errors.New("sim: exchange ended without a response")
	}
}

type cbState int

// Callback states of ProcessorState::CallbackState in
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.h.
const (
	cbIdle cbState = iota
	cbHeaders
	cbBufferedBody
	cbStreamedBody
	cbBufferedPartial
	cbTrailers
)

type upstreamResult struct {
	resp *UpstreamResponse
	err  error
}

// exchange is the state of one Do; only run's goroutine touches the unlocked
// fields.
type exchange struct {
	f      *Filter
	cfg    *Config
	ctx    context.Context
	req    *Request
	up     Upstream
	num    uint64
	filter *extprocfilterv3.ProcessingMode // filter-level mode, the base of overrides

	dec, enc *direction

	stream             *procStream
	streamClosed       bool
	processingComplete bool // Envoy's Filter::processing_complete_ (ext_proc.cc)

	respCh    chan recvResult
	upCh      chan upstreamResult
	upCancel  context.CancelFunc
	upPending bool              // RoundTrip running, result not consumed
	upResp    *UpstreamResponse // consumed upstream response (its body is closed at the end)
	wake      chan struct{}
	stop      chan struct{}

	down     *pipe // response body to the client
	upBody   *pipe // request body to the upstream
	head     chan struct{}
	headSent bool
	resp     *Response
	finished bool
	eof      bool // the response body ended cleanly; EOF is released after the loop

	mu           sync.Mutex
	trace        []Event
	dynMeta      *structpb.Struct
	sent         *SentRequest
	respTrailers []Header
	done         chan struct{}
}

func newExchange(ctx context.Context, f *Filter, req *Request, up Upstream) *exchange {
	x := &exchange{
		f: f, cfg: &f.cfg, ctx: ctx, req: req, up: up, num: f.n.Add(1),
		filter:  f.cfg.ProcessingMode,
		respCh:  make(chan recvResult),
		upCh:    make(chan upstreamResult, 1),
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		head:    make(chan struct{}),
		done:    make(chan struct{}),
		dynMeta: &structpb.Struct{Fields: map[string]*structpb.Value{}},
	}
	x.dec = &direction{x: x, request: true, dirMode: modeFor(x.filter, true)}
	x.enc = &direction{x: x, dirMode: modeFor(x.filter, false)}
	x.down = newPipe(x.wake)
	x.resp = &Response{x: x}
	return x
}

func (x *exchange) record(e Event) {
	if x.cfg.NoTrace {
		return
	}
	x.mu.Lock()
	x.trace = append(x.trace, e)
	x.mu.Unlock()
}

// run is the event loop.
func (x *exchange) run() {
	defer x.cleanup()
	x.startRequest()
	for !x.finished {
		select {
		case r := <-x.respCh:
			x.onResponse(r)
		case ev := <-x.dec.readable():
			x.dec.onData(ev)
			x.note(x.dec, ev)
		case ev := <-x.enc.readable():
			x.enc.onData(ev)
			x.note(x.enc, ev)
		case u := <-x.upCh:
			x.upPending = false
			x.onUpstream(u)
		case <-x.dec.timerC:
			x.onTimeout(x.dec)
		case <-x.enc.timerC:
			x.onTimeout(x.enc)
		case <-x.ctx.Done():
			x.abort()
		case <-x.down.gone:
			x.abort()
		case <-x.wake:
			// A reader drained data: re-evaluate watermarks.
		}
	}
}

func (x *exchange) note(d *direction, ev bodyEvent) {
	if x.f.hook != nil {
		x.f.hook(fmt.Sprintf("%s data %d eos=%v", d.name(), len(ev.data), ev.eos))
	}
}

// cleanup runs at the end of the HTTP stream (Filter::onDestroy in
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc): stop
// timers, close the gRPC stream if still open, release helpers.
func (x *exchange) cleanup() {
	x.dec.stopTimer()
	x.enc.stopTimer()
	x.closeStream()
	// EOF is released only now, after the last response's dynamic metadata
	// and trailers were recorded, so readers see final values after EOF.
	if x.eof {
		x.down.finish(nil)
	}
	x.down.finish(ErrClientDisconnected)
	if x.upBody != nil {
		x.upBody.finish(ErrClientDisconnected)
	}
	if x.upCancel != nil {
		x.upCancel()
	}
	if x.upResp != nil && x.upResp.Body != nil {
		x.upResp.Body.Close() // unblocks the source goroutine's Read
	}
	if x.upPending {
		go func() {
			if r := <-x.upCh; r.resp != nil && r.resp.Body != nil {
				r.resp.Body.Close()
			}
		}()
	}
	close(x.stop)
	if x.stream != nil {
		// The sender may be stuck in Send if the processor stopped reading;
		// bound the wait, then force the reset.
		t := time.NewTimer(x.cfg.RemoteCloseTimeout + time.Second)
		select {
		case <-x.stream.senderDone:
		case <-t.C:
			x.stream.cancel()
			<-x.stream.senderDone
		}
		t.Stop()
	}
	close(x.done)
}

// ---- request start and upstream ----

func (x *exchange) startRequest() {
	r := x.req
	d := x.dec
	scheme := r.Scheme
	if scheme == "" {
		scheme = "http"
	}
	h := &headerMap{}
	h.add(":method", r.Method)
	h.add(":path", r.Path)
	h.add(":scheme", scheme)
	h.add(":authority", r.Authority)
	for _, hd := range r.Headers {
		h.add(strings.ToLower(hd.Name), hd.Value)
	}
	// HCM adds these before any HTTP filter runs
	// (https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers).
	if !h.has("x-forwarded-proto") {
		h.add("x-forwarded-proto", scheme)
	}
	if !h.has("x-request-id") {
		h.add("x-request-id", newRequestID())
	}
	d.hdrs = h
	hasBody := r.BodyStream != nil || len(r.Body) > 0
	d.endStream = !hasBody && len(r.Trailers) == 0
	if !d.endStream {
		s := &source{ch: make(chan bodyEvent), stop: x.stop, k: newChunker(x.cfg.Chunking, x.num, 0)}
		if len(r.Trailers) > 0 {
			tr := r.Trailers
			s.trailers = func() []Header { return lowerHeaders(tr) }
		}
		d.src = s.ch
		if r.BodyStream != nil {
			go s.runReader(r.BodyStream, nil)
		} else {
			go s.runBytes(r.Body)
		}
	}
	d.onHeaders()
}

// startUpstream is the router receiving the request headers.
func (x *exchange) startUpstream() {
	d := x.dec
	ur := &UpstreamRequest{Headers: d.hdrs.regular()}
	ur.Method, _ = d.hdrs.get(":method")
	ur.Path, _ = d.hdrs.get(":path")
	ur.Scheme, _ = d.hdrs.get(":scheme")
	ur.Authority, _ = d.hdrs.get(":authority")
	x.mu.Lock()
	x.sent = &SentRequest{Method: ur.Method, Path: ur.Path, Scheme: ur.Scheme, Authority: ur.Authority,
		Headers: append([]Header(nil), ur.Headers...)}
	x.mu.Unlock()
	if !d.endStream {
		x.upBody = newPipe(x.wake)
		ur.Body = x.upBody
	}
	ctx, cancel := context.WithCancel(x.ctx)
	x.upCancel = cancel
	x.upPending = true
	go func() {
		resp, err := x.up.RoundTrip(ctx, ur)
		x.upCh <- upstreamResult{resp, err}
	}()
}

func (x *exchange) onUpstream(u upstreamResult) {
	if u.err != nil {
		if x.ctx.Err() != nil {
			x.abort()
			return
		}
		// Router local reply; with the runtime guard skip_ext_proc_on_local_reply
		// (default true, https://github.com/envoyproxy/envoy/blob/main/source/common/runtime/runtime_features.cc)
		// it never reaches the processor.
		x.localReply(503, nil, []byte("upstream connect error or disconnect/reset before headers. reset reason: connection failure"),
			"upstream_reset_before_response_started{connection_failure}")
		return
	}
	r := u.resp
	x.upResp = r
	e := x.enc
	h := &headerMap{}
	h.add(":status", strconv.Itoa(r.Status))
	for _, hd := range r.Headers {
		if !hopByHop(strings.ToLower(hd.Name)) {
			h.add(strings.ToLower(hd.Name), hd.Value)
		}
	}
	e.hdrs = h
	method, _ := x.dec.hdrs.get(":method")
	noBody := r.Body == nil || r.Status == 204 || r.Status == 304 || method == "HEAD"
	if cl, ok := h.get("content-length"); ok && cl == "0" {
		noBody = true
	}
	if noBody {
		if r.Body != nil {
			r.Body.Close()
		}
		e.endStream = true
	} else {
		s := &source{ch: make(chan bodyEvent), stop: x.stop, k: newChunker(x.cfg.Chunking, x.num, 1)}
		if r.Trailers != nil {
			tf := r.Trailers
			s.trailers = func() []Header { return lowerHeaders(tf()) }
		}
		e.src = s.ch
		go s.runReader(r.Body, r.Body)
	}
	// Filter::encodeHeaders (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc):
	// a response path that needs no processing (noExternalProcess) closes the
	// stream right away.
	if !x.processingComplete && e.noExternalProcess() && x.dec.bodyDone {
		x.closeStream()
	}
	e.onHeaders()
}

// deliverHead hands the response headers to Do.
func (x *exchange) deliverHead(status int, hdrs []Header, local bool, details string) {
	if x.headSent {
		return
	}
	x.headSent = true
	x.resp.Status = status
	x.resp.Headers = hdrs
	x.resp.LocalReply = local
	x.resp.Details = details
	x.resp.Body = &responseBody{p: x.down, done: x.done}
	close(x.head)
}

// ---- gRPC ----

// send sends m for direction d and starts its processor call in state cb
// (ProcessorState::onStartProcessorCall in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc):
// the message timer is armed per send.
func (x *exchange) send(d *direction, m *extprocv3.ProcessingRequest, cb cbState) bool {
	first := false
	if x.stream == nil {
		s, err := openStream(x.ctx, x.f.client, x.cfg, x.respCh, x.stop, x.record)
		if errors.Is(err, errOpenTimeout) {
			x.messageTimeout()
			return false
		}
		if err != nil {
			x.onGrpcError(err)
			return false
		}
		x.stream = s
		first = true
		x.record(Event{Kind: EventStreamOpen})
	}
	if x.streamClosed {
		// Only reachable if the close optimization misjudged; Envoy would have
		// nothing to send here. Continue without the processor.
		x.failOpen("send after stream close")
		return false
	}
	m.MetadataContext = x.forwardedMetadata() // always present (Filter::addDynamicMetadata in ext_proc.cc)
	if first {
		m.ProtocolConfig = &extprocv3.ProtocolConfiguration{
			RequestBodyMode:  x.dec.bodyMode,
			ResponseBodyMode: x.enc.bodyMode,
		}
	}
	if !d.attrsSent {
		if attrs := x.attributes(d); attrs != nil {
			m.Attributes = map[string]*structpb.Struct{attributesKey: attrs}
		}
		d.attrsSent = true
	}
	x.stream.send(m)
	x.record(Event{Kind: EventSend, Request: m})
	d.cb = cb
	d.armTimer(x.cfg.MessageTimeout)
	return true
}

// forwardedMetadata is the metadata_context of every message: the request's
// dynamic metadata in the forwarding namespaces, empty otherwise
// (metadata_options.forwarding_namespaces in
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto).
// A namespace whose value does not convert to a Struct is left out, as a
// filter could not have written it.
func (x *exchange) forwardedMetadata() *corev3.Metadata {
	md := &corev3.Metadata{}
	for _, ns := range x.cfg.ForwardingNamespaces {
		v, ok := x.req.Metadata[ns]
		if !ok {
			continue
		}
		st, err := structpb.NewStruct(v)
		if err != nil {
			continue
		}
		if md.FilterMetadata == nil {
			md.FilterMetadata = map[string]*structpb.Struct{}
		}
		md.FilterMetadata[ns] = st
	}
	return md
}

// attributes evaluates the configured expressions for the first message of a
// direction (request_attributes / response_attributes in
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto;
// attribute names in https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/advanced/attributes).
// Unknown expressions are omitted as Envoy omits failing ones
// (ExpressionManager::evaluateAttributes in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/matching_utils.cc).
func (x *exchange) attributes(d *direction) *structpb.Struct {
	exprs := x.cfg.RequestAttributes
	if !d.request {
		exprs = x.cfg.ResponseAttributes
	}
	if len(exprs) == 0 {
		return nil
	}
	s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for _, e := range exprs {
		v, ok := x.req.Attributes[e]
		if !ok {
			v, ok = x.builtinAttribute(e)
		}
		if !ok {
			continue
		}
		if pv, ok := attributeValue(v); ok {
			s.Fields[e] = pv
		}
	}
	return s
}

func (x *exchange) builtinAttribute(e string) (any, bool) {
	h := x.dec.hdrs
	switch e {
	case "request.path":
		return h.get(":path")
	case "request.url_path":
		p, ok := h.get(":path")
		if i := strings.IndexByte(p, '?'); i >= 0 {
			p = p[:i]
		}
		return p, ok
	case "request.host":
		return h.get(":authority")
	case "request.scheme":
		return h.get(":scheme")
	case "request.method":
		return h.get(":method")
	case "request.id":
		return h.get("x-request-id")
	case "request.protocol":
		return "HTTP/1.1", true
	case "response.code":
		if x.enc.hdrs != nil {
			s, _ := x.enc.hdrs.get(":status")
			n, err := strconv.Atoi(s)
			return n, err == nil
		}
	}
	return nil, false
}

// closeStream is Envoy's Filter::closeStreamMaybeGraceful
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
func (x *exchange) closeStream() {
	if x.stream == nil || x.streamClosed {
		return
	}
	x.streamClosed = true
	x.stream.close()
}

// onResponse is Envoy's Filter::onReceiveMessage plus the gRPC close callbacks
// (onGrpcClose, onGrpcError) in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc.
func (x *exchange) onResponse(r recvResult) {
	if r.err != nil {
		if x.streamClosed || x.processingComplete {
			return // our own close, or already done with the processor
		}
		if errors.Is(r.err, io.EOF) {
			// Process returned nil: continue unmodified without the processor,
			// whatever failure_mode_allow says (Filter::onGrpcClose in
			// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
			x.record(Event{Kind: EventGRPCClose})
			x.failOpenQuiet()
			return
		}
		x.onGrpcError(r.err)
		return
	}
	m := r.msg
	x.record(Event{Kind: EventRecv, Response: m})
	if x.processingComplete || x.streamClosed {
		x.record(Event{Kind: EventIgnored, Detail: "response after processing complete"})
		return
	}
	if ot := m.GetOverrideMessageTimeout(); ot != nil {
		x.onNewTimeout(ot.AsDuration())
		// Other fields are ignored (ProcessingResponse.override_message_timeout,
		// https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto).
		return
	}
	if m.GetModeOverride() != nil {
		x.applyModeOverride(m.GetModeOverride())
	}
	var err error
	switch v := m.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		if x.cfg.DisableImmediateResponse {
			err = errSpurious
			break
		}
		x.applyDynamicMetadata(m)
		x.immediateResponse(v.ImmediateResponse)
		return
	case *extprocv3.ProcessingResponse_RequestHeaders:
		err = x.dec.headersResponse(v.RequestHeaders.GetResponse())
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		err = x.enc.headersResponse(v.ResponseHeaders.GetResponse())
	case *extprocv3.ProcessingResponse_RequestBody:
		err = x.dec.bodyResponse(v.RequestBody.GetResponse())
	case *extprocv3.ProcessingResponse_ResponseBody:
		err = x.enc.bodyResponse(v.ResponseBody.GetResponse())
	case *extprocv3.ProcessingResponse_RequestTrailers:
		err = x.dec.trailersResponse(v.RequestTrailers.GetHeaderMutation())
	case *extprocv3.ProcessingResponse_ResponseTrailers:
		err = x.enc.trailersResponse(v.ResponseTrailers.GetHeaderMutation())
	default:
		err = fmt.Errorf("unhandled message: %w", errSpurious)
	}
	if err == nil {
		x.applyDynamicMetadata(m)
		return
	}
	if errors.Is(err, errSpurious) {
		x.record(Event{Kind: EventSpurious, Detail: err.Error()})
		if x.cfg.FailureModeAllow || x.cfg.DisableFailCloseSpurious {
			x.failOpen("spurious message")
			return
		}
		x.errorReply(x.cfg.StatusOnError, err.Error())
		return
	}
	// Invalid mutations and the like: status_on_error regardless of
	// failure_mode_allow (the error branch of Filter::onReceiveMessage,
	// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
	x.errorReply(x.cfg.StatusOnError, err.Error())
}

// applyModeOverride applies ProcessingResponse.mode_override
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto):
// honoured only with allow_mode_override
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto)
// and only while a direction waits for a headers response (Filter::onReceiveMessage
// in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
func (x *exchange) applyModeOverride(ov *extprocfilterv3.ProcessingMode) {
	if !x.cfg.AllowModeOverride || (x.dec.cb != cbHeaders && x.enc.cb != cbHeaders) {
		x.record(Event{Kind: EventIgnored, Detail: "mode_override"})
		return
	}
	m, ok := effectiveOverride(x.filter, ov, x.cfg.AllowedOverrideModes)
	if !ok {
		x.record(Event{Kind: EventIgnored, Detail: "mode_override not in allowed_override_modes"})
		return
	}
	x.dec.dirMode = modeFor(m, true)
	x.enc.dirMode = modeFor(m, false)
	x.record(Event{Kind: EventModeOverride, Detail: modeString(m)})
}

func (x *exchange) applyDynamicMetadata(m *extprocv3.ProcessingResponse) {
	md := m.GetDynamicMetadata()
	if md == nil {
		return
	}
	x.mu.Lock()
	dropped := mergeMetadata(x.dynMeta, md, x.cfg.ReceivingNamespaces)
	x.mu.Unlock()
	for _, ns := range dropped {
		x.record(Event{Kind: EventIgnored, Detail: "dynamic_metadata namespace " + ns + " not receiving"})
	}
}

func (x *exchange) onNewTimeout(d time.Duration) {
	var dir *direction
	switch {
	case x.dec.cb != cbIdle:
		dir = x.dec
	case x.enc.cb != cbIdle:
		dir = x.enc
	}
	if dir == nil || x.cfg.MaxMessageTimeout == 0 || d < time.Millisecond || d > x.cfg.MaxMessageTimeout || dir.timeoutOverridden {
		x.record(Event{Kind: EventIgnored, Detail: "override_message_timeout"})
		return
	}
	dir.timeoutOverridden = true
	dir.armTimer(d)
	x.record(Event{Kind: EventTimeoutOverride, Detail: d.String()})
}

// onTimeout is Envoy's Filter::onMessageTimeout
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
func (x *exchange) onTimeout(d *direction) {
	d.timerC = nil
	if x.processingComplete {
		return
	}
	x.messageTimeout()
}

func (x *exchange) messageTimeout() {
	x.record(Event{Kind: EventTimeout})
	if x.cfg.FailureModeAllow {
		x.failOpen("message timeout")
		return
	}
	x.errorReply(504, "ext_proc_error_per-message_timeout_exceeded")
}

// onGrpcError is Envoy's Filter::onGrpcError
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
func (x *exchange) onGrpcError(err error) {
	st := status.Convert(err)
	x.record(Event{Kind: EventGRPCError, Detail: st.String()})
	if x.cfg.FailureModeAllow {
		x.failOpen("gRPC error")
		return
	}
	x.errorReply(x.cfg.StatusOnError, fmt.Sprintf("ext_proc_error_gRPC_error_%d{%s}", int(st.Code()), st.Message()))
}

// failOpen closes the stream and lets the exchange continue unmodified
// (Filter::clearAsyncState with processing_complete_ set,
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
func (x *exchange) failOpen(why string) {
	x.record(Event{Kind: EventFailOpen, Detail: why})
	x.failOpenQuiet()
}

func (x *exchange) failOpenQuiet() {
	x.processingComplete = true
	x.closeStream()
	x.dec.clearAsync()
	x.enc.clearAsync()
}

// errorReply is an ext_proc error turned into a local reply (empty body).
func (x *exchange) errorReply(code int, details string) {
	x.localReply(code, nil, nil, details)
}

// immediateResponse is ProcessingResponse.immediate_response
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto):
// a missing or sub-200 status becomes 200 (Filter::sendImmediateResponse in
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
func (x *exchange) immediateResponse(ir *extprocv3.ImmediateResponse) {
	code := int(ir.GetStatus().GetCode())
	if code < 200 {
		code = 200
	}
	x.localReply(code, ir.GetHeaders(), ir.GetBody(), ir.GetDetails())
}

// localReply is sendLocalReply (https://github.com/envoyproxy/envoy/blob/main/source/common/http/filter_manager.cc):
// it ends processing and closes the stream;
// no response-phase message is ever sent for it (skip_ext_proc_on_local_reply).
// After response headers went downstream all it can do is reset.
func (x *exchange) localReply(code int, mut *extprocv3.HeaderMutation, body []byte, details string) {
	details = detailsString(details)
	x.processingComplete = true
	x.closeStream()
	x.dec.stopTimer()
	x.enc.stopTimer()
	if x.upCancel != nil {
		x.upCancel()
	}
	x.record(Event{Kind: EventLocalReply, Detail: fmt.Sprintf("%d %s", code, details)})
	if x.headSent {
		x.reset()
		return
	}
	h := &headerMap{}
	if mut != nil {
		// Failures applying ImmediateResponse headers are only logged in Envoy.
		o := x.mutationOptions(false, false)
		if n, err := applyHeaderMutation(h, mut, o); err != nil || n > 0 {
			x.record(Event{Kind: EventMutationRejected, Detail: "immediate_response headers"})
		}
	}
	h.remove(":status")
	if len(body) > 0 && !h.has("content-type") {
		h.set("content-type", "text/plain")
	}
	h.set("content-length", strconv.Itoa(len(body)))
	x.deliverHead(code, h.regular(), true, details)
	x.down.write(body)
	x.eof = true
	x.finished = true
}

func (x *exchange) reset() {
	x.record(Event{Kind: EventReset})
	x.down.finish(ErrStreamReset)
	x.finished = true
}

// abort is a client disconnect: Envoy's Filter::onDestroy
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc) closes the stream with
// replies outstanding and no end_of_stream message is sent.
func (x *exchange) abort() {
	if x.finished {
		return
	}
	x.record(Event{Kind: EventClientDisconnect})
	x.processingComplete = true
	x.closeStream()
	if x.upCancel != nil {
		x.upCancel()
	}
	x.down.finish(ErrClientDisconnected)
	x.finished = true
}

func (x *exchange) mutationOptions(removeCL, replacing bool) mutationOptions {
	return mutationOptions{rules: &x.cfg.MutationRules, legacy: x.cfg.LegacyHeaderValue,
		removeContentLength: removeCL, replacing: replacing,
		maxHeaders: x.cfg.MaxHeaders, maxKB: x.cfg.MaxHeadersKB}
}

// checkClose is Envoy's Filter::closeGrpcStreamIfLastRespReceived
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc): with the runtime guard
// ext_proc_stream_close_optimization on, the stream closes as soon as the
// last response the exchange will ever need has arrived.
func (x *exchange) checkClose(kind string, lastBody bool) {
	if x.cfg.DisableStreamCloseOptimization || x.processingComplete {
		return
	}
	d, e := x.dec, x.enc
	last := false
	switch kind {
	case "request_headers":
		last = (d.endStream || (d.bodyMode == extprocfilterv3.ProcessingMode_NONE && !d.sendTrailers)) && e.noExternalProcess()
	case "request_body":
		last = lastBody && e.noExternalProcess()
	case "request_trailers":
		last = e.noExternalProcess()
	case "response_headers":
		last = e.endStream || (e.bodyMode == extprocfilterv3.ProcessingMode_NONE && !e.sendTrailers)
	case "response_body":
		last = lastBody
	case "response_trailers":
		last = true
	}
	if last {
		x.closeStream()
	}
}

// ---- helpers ----

// responseBody is Response.Body: Close before EOF is a client disconnect and
// waits (bounded by the close sequence) for the exchange to finish.
type responseBody struct {
	p    *pipe
	done chan struct{}
}

func (b *responseBody) Read(p []byte) (int, error) { return b.p.Read(p) }

func (b *responseBody) Close() error {
	b.p.Close()
	<-b.done
	return nil
}

func hopByHop(name string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te":
		return true
	}
	return false
}

func lowerHeaders(hs []Header) []Header {
	out := make([]Header, 0, len(hs))
	for _, h := range hs {
		out = append(out, Header{strings.ToLower(h.Name), h.Value})
	}
	return out
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
