package sim

import (
	"context"
	"errors"
	"fmt"
	"io"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// Header is one header entry. Order is significant and duplicates are allowed;
// names the filter produces are lower-case, like Envoy's header map.
type Header struct {
	Name, Value string
}

// Request is the downstream HTTP request as it reaches the ext_proc filter.
// The filter reads it (and aliases Body) until the exchange is Done; do not
// modify it meanwhile.
type Request struct {
	// Method, Path (with query), Scheme and Authority become the pseudo-headers
	// :method, :path, :scheme and :authority. Scheme defaults to "http".
	Method, Path, Scheme, Authority string
	// Headers are the regular request headers; names are lower-cased by the
	// filter. x-request-id and x-forwarded-proto are added when absent, like
	// Envoy's HTTP connection manager does before any filter runs
	// (https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers).
	Headers []Header
	// Body is the whole request body, delivered to the filter split per
	// Config.Chunking. Ignored when BodyStream is set.
	Body []byte
	// BodyStream, when non-nil, is read incrementally as the downstream codec
	// would; tests use an io.Pipe to control exactly when data "arrives".
	BodyStream io.Reader
	// Trailers are request trailers, delivered after the body.
	Trailers []Header
	// Attributes are the values of the CEL expressions listed in
	// Config.RequestAttributes, keyed by the expression text, e.g.
	// "xds.route_metadata.filter_metadata['tokenwarden']['policy']". A few
	// request.* attributes are derived from the request when absent here.
	Attributes map[string]any
	// Metadata is the request's dynamic metadata as earlier filters left it,
	// by namespace: e.g. {"envoy.filters.http.jwt_authn": {"payload":
	// {"sub": "alice", ...}}} after jwt_authn verified a token with
	// payload_in_metadata: payload. Namespaces listed in
	// Config.ForwardingNamespaces reach the processor in metadata_context.
	Metadata map[string]map[string]any
}

// UpstreamRequest is what the filter hands to the router once the request
// headers continue.
type UpstreamRequest struct {
	Method, Path, Scheme, Authority string
	// Headers exclude pseudo-headers.
	Headers []Header
	// Body streams the request body as the filter releases it; nil when the
	// request headers carried end_of_stream.
	Body io.Reader
}

// UpstreamResponse is the upstream's response as it reaches the filter.
type UpstreamResponse struct {
	Status  int
	Headers []Header
	// Body is read incrementally; nil means no body.
	Body io.ReadCloser
	// Trailers, if set, is called after Body returned io.EOF.
	Trailers func() []Header
}

// Upstream is the router and everything behind it.
type Upstream interface {
	// RoundTrip sends req and returns once response headers are available.
	// It must return promptly when ctx is cancelled.
	RoundTrip(ctx context.Context, req *UpstreamRequest) (*UpstreamResponse, error)
}

// UpstreamFunc adapts a function to Upstream.
type UpstreamFunc func(ctx context.Context, req *UpstreamRequest) (*UpstreamResponse, error)

// RoundTrip calls f.
func (f UpstreamFunc) RoundTrip(ctx context.Context, req *UpstreamRequest) (*UpstreamResponse, error) {
	return f(ctx, req)
}

// SentRequest is a record of what actually went upstream, after mutations.
type SentRequest struct {
	Method, Path, Scheme, Authority string
	Headers                         []Header
	Body                            []byte
	Trailers                        []Header
}

// ErrStreamReset is returned by Response.Body when Envoy would reset the
// downstream stream after response headers were sent: an ImmediateResponse or
// an error in the response phase of a STREAMED body (sendLocalReply can only
// reset once headers went, https://github.com/envoyproxy/envoy/blob/main/source/common/http/filter_manager.cc),
// or an upstream reset mid-body.
var ErrStreamReset = errors.New("sim: stream reset by the ext_proc filter")

// ErrClientDisconnected is returned by Response.Body reads after the client
// context was cancelled or the body was closed early.
var ErrClientDisconnected = errors.New("sim: client disconnected")

// Response is the HTTP response as it leaves the filter towards the client.
type Response struct {
	Status int
	// Headers exclude :status.
	Headers []Header
	// Body streams the response body: chunks are released only as the
	// processor answers them, in order. Closing it before io.EOF is a client
	// disconnect. It returns ErrStreamReset when the stream is reset.
	Body io.ReadCloser
	// LocalReply is true when the filter (not the upstream) produced the
	// response: ImmediateResponse, an error, a timeout or a buffer overflow.
	LocalReply bool
	// Details is %RESPONSE_CODE_DETAILS% for local replies, e.g.
	// "ext_proc_error_per-message_timeout_exceeded" or
	// "request_payload_too_large".
	Details string

	x *exchange
}

// Done is closed when the exchange has completely finished: body delivered or
// abandoned, gRPC stream closed (including a graceful close's wait) and all
// helper goroutines gone. Trace, DynamicMetadata, UpstreamRequest and
// Trailers are final from then on.
func (r *Response) Done() <-chan struct{} { return r.x.done }

// Trace returns a snapshot of the ordered protocol events so far.
func (r *Response) Trace() []Event {
	r.x.mu.Lock()
	defer r.x.mu.Unlock()
	return append([]Event(nil), r.x.trace...)
}

// DynamicMetadata returns a copy of the dynamic metadata written so far, one
// top-level key per receiving namespace (metadata_options.receiving_namespaces,
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto).
// Read it after Done for the access-log view.
func (r *Response) DynamicMetadata() *structpb.Struct {
	r.x.mu.Lock()
	defer r.x.mu.Unlock()
	return cloneStruct(r.x.dynMeta)
}

// UpstreamRequest returns what was sent upstream so far (nil if nothing was):
// headers as soon as the request headers continued, the body as released.
func (r *Response) UpstreamRequest() *SentRequest {
	r.x.mu.Lock()
	defer r.x.mu.Unlock()
	if r.x.sent == nil {
		return nil
	}
	s := *r.x.sent
	s.Headers = append([]Header(nil), s.Headers...)
	s.Body = append([]byte(nil), s.Body...)
	s.Trailers = append([]Header(nil), s.Trailers...)
	return &s
}

// Trailers returns the response trailers forwarded downstream, after Done.
func (r *Response) Trailers() []Header {
	r.x.mu.Lock()
	defer r.x.mu.Unlock()
	return append([]Header(nil), r.x.respTrailers...)
}

// Header returns the first value of the named response header.
func (r *Response) Header(name string) (string, bool) {
	return headerValue(r.Headers, name)
}

func headerValue(hs []Header, name string) (string, bool) {
	for _, h := range hs {
		if h.Name == name {
			return h.Value, true
		}
	}
	return "", false
}

// EventKind classifies a trace Event.
type EventKind int

// Event kinds, in the vocabulary of Envoy's ext_proc filter
// (https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/ext_proc_filter).
const (
	EventStreamOpen       EventKind = iota + 1 // gRPC stream opened (lazily)
	EventSend                                  // a ProcessingRequest was sent
	EventRecv                                  // a ProcessingResponse arrived
	EventIgnored                               // a response or field was ignored; Detail says why
	EventModeOverride                          // mode_override applied; Detail is the new mode
	EventTimeoutOverride                       // override_message_timeout restarted the timer
	EventClearRouteCache                       // the route cache was cleared: the route would be re-picked
	EventTimeout                               // message_timeout fired
	EventSpurious                              // a spurious response: wrong type for the callback state (processor_state.cc)
	EventFailOpen                              // processing abandoned, exchange continues unmodified
	EventGRPCClose                             // processor ended the stream with OK
	EventGRPCError                             // stream failed with a gRPC error
	EventMutationRejected                      // a header mutation was ignored by the rules
	EventLocalReply                            // a local reply was generated; Detail is the details string
	EventReset                                 // downstream stream reset after headers
	EventClientDisconnect                      // the client went away mid-exchange
	EventHalfClose                             // the filter half-closed the gRPC stream
	EventCancel                                // the filter cancelled (reset) the gRPC stream
)

var eventNames = map[EventKind]string{
	EventStreamOpen: "stream_open", EventSend: "send", EventRecv: "recv", EventIgnored: "ignored",
	EventModeOverride: "mode_override", EventTimeoutOverride: "timeout_override",
	EventClearRouteCache: "clear_route_cache", EventTimeout: "timeout", EventSpurious: "spurious",
	EventFailOpen: "fail_open", EventGRPCClose: "grpc_close", EventGRPCError: "grpc_error",
	EventMutationRejected: "mutation_rejected", EventLocalReply: "local_reply", EventReset: "reset",
	EventClientDisconnect: "client_disconnect", EventHalfClose: "half_close", EventCancel: "cancel",
}

func (k EventKind) String() string {
	if s, ok := eventNames[k]; ok {
		return s
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one entry of the exchange trace.
type Event struct {
	Kind EventKind
	// Request is set for EventSend, Response for EventRecv; both are the
	// messages as sent/received (do not modify).
	Request  *extprocv3.ProcessingRequest
	Response *extprocv3.ProcessingResponse
	Detail   string
}

func (e Event) String() string {
	switch {
	case e.Request != nil:
		return fmt.Sprintf("%s %s", e.Kind, requestKind(e.Request))
	case e.Response != nil:
		return fmt.Sprintf("%s %s", e.Kind, responseKind(e.Response))
	case e.Detail != "":
		return fmt.Sprintf("%s %s", e.Kind, e.Detail)
	}
	return e.Kind.String()
}

func requestKind(m *extprocv3.ProcessingRequest) string {
	switch r := m.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return fmt.Sprintf("request_headers eos=%v", r.RequestHeaders.GetEndOfStream())
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return fmt.Sprintf("response_headers eos=%v", r.ResponseHeaders.GetEndOfStream())
	case *extprocv3.ProcessingRequest_RequestBody:
		return fmt.Sprintf("request_body len=%d eos=%v", len(r.RequestBody.GetBody()), r.RequestBody.GetEndOfStream())
	case *extprocv3.ProcessingRequest_ResponseBody:
		return fmt.Sprintf("response_body len=%d eos=%v", len(r.ResponseBody.GetBody()), r.ResponseBody.GetEndOfStream())
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return "request_trailers"
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return "response_trailers"
	}
	return "unknown"
}

func responseKind(m *extprocv3.ProcessingResponse) string {
	switch m.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		return "request_headers"
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		return "response_headers"
	case *extprocv3.ProcessingResponse_RequestBody:
		return "request_body"
	case *extprocv3.ProcessingResponse_ResponseBody:
		return "response_body"
	case *extprocv3.ProcessingResponse_RequestTrailers:
		return "request_trailers"
	case *extprocv3.ProcessingResponse_ResponseTrailers:
		return "response_trailers"
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		return "immediate_response"
	case nil:
		if m.GetOverrideMessageTimeout() != nil {
			return "override_message_timeout"
		}
		return "empty"
	}
	return "other"
}
