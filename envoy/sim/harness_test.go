package sim

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// ---- scripted processor ----

// streamEnd is what the processor observed when its stream ended.
type streamEnd struct {
	recvErr  error // the error Recv returned (io.EOF, Canceled, ...)
	ctxErrAt error // stream ctx error at the moment Recv returned
	received []*extprocv3.ProcessingRequest
}

type proc struct {
	extprocv3.UnimplementedExternalProcessorServer
	handle func(s *pstream) error

	mu      sync.Mutex
	streams int
	md      []metadata.MD
	ends    chan streamEnd
}

// pstream wraps the server stream with recording helpers for scripts.
type pstream struct {
	extprocv3.ExternalProcessor_ProcessServer
	received []*extprocv3.ProcessingRequest
	recvErr  error
	ctxErrAt error
}

// recv returns the next message, or nil at end of stream (recording why).
func (s *pstream) recv() *extprocv3.ProcessingRequest {
	m, err := s.Recv()
	if err != nil {
		s.recvErr = err
		s.ctxErrAt = s.Context().Err()
		return nil
	}
	s.received = append(s.received, m)
	return m
}

func (p *proc) Process(s extprocv3.ExternalProcessor_ProcessServer) error {
	md, _ := metadata.FromIncomingContext(s.Context())
	p.mu.Lock()
	p.streams++
	p.md = append(p.md, md)
	p.mu.Unlock()
	ps := &pstream{ExternalProcessor_ProcessServer: s}
	err := p.handle(ps)
	select {
	case p.ends <- streamEnd{recvErr: ps.recvErr, ctxErrAt: ps.ctxErrAt, received: ps.received}:
	default: // benchmarks open more streams than anyone inspects
	}
	return err
}

func (p *proc) streamCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.streams
}

// end waits for the next stream end.
func (p *proc) end(t *testing.T) streamEnd {
	t.Helper()
	select {
	case e := <-p.ends:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("processor stream did not end")
	}
	return streamEnd{}
}

// startProc serves handle on an in-memory listener and returns a client.
func startProc(t testing.TB, handle func(s *pstream) error) (extprocv3.ExternalProcessorClient, *proc) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	p := &proc{handle: handle, ends: make(chan streamEnd, 64)}
	extprocv3.RegisterExternalProcessorServer(srv, p)
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	return extprocv3.NewExternalProcessorClient(conn), p
}

// replyAll answers every message with fn(msg); nil means "no reply".
func replyAll(fn func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse) func(s *pstream) error {
	return func(s *pstream) error {
		for {
			m := s.recv()
			if m == nil {
				return nil
			}
			if r := fn(m); r != nil {
				if err := s.Send(r); err != nil {
					return err
				}
			}
		}
	}
}

// passthrough is the empty response of the matching type ("continue").
func passthrough(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	return reply(m, nil)
}

// reply builds the matching response for m carrying cr.
func reply(m *extprocv3.ProcessingRequest, cr *extprocv3.CommonResponse) *extprocv3.ProcessingResponse {
	switch m.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: cr}}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{Response: cr}}}
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: cr}}}
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{Response: cr}}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{HeaderMutation: cr.GetHeaderMutation()}}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{HeaderMutation: cr.GetHeaderMutation()}}}
	}
	return &extprocv3.ProcessingResponse{}
}

func setRaw(name, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: name, RawValue: []byte(value)}}
}

func appendRaw(name, value string) *corev3.HeaderValueOption {
	o := setRaw(name, value)
	o.Append = wrapperspb.Bool(true)
	return o
}

func kinds(ms []*extprocv3.ProcessingRequest) []string {
	var out []string
	for _, m := range ms {
		out = append(out, requestKind(m))
	}
	return out
}

// ---- scripted upstream ----

type testUpstream struct {
	status  int
	headers []Header
	body    []byte
	stream  io.ReadCloser // overrides body
	trailer []Header
	err     error

	mu   sync.Mutex
	got  *UpstreamRequest
	seen []byte
	hits int
}

func (u *testUpstream) RoundTrip(ctx context.Context, r *UpstreamRequest) (*UpstreamResponse, error) {
	var b []byte
	if r.Body != nil {
		var err error
		b, err = io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
	}
	u.mu.Lock()
	u.got, u.seen = r, b
	u.hits++
	u.mu.Unlock()
	if u.err != nil {
		return nil, u.err
	}
	st := u.status
	if st == 0 {
		st = 200
	}
	resp := &UpstreamResponse{Status: st, Headers: u.headers}
	switch {
	case u.stream != nil:
		resp.Body = u.stream
	case u.body != nil:
		resp.Body = io.NopCloser(bytes.NewReader(u.body))
	}
	if u.trailer != nil {
		tr := u.trailer
		resp.Trailers = func() []Header { return tr }
	}
	return resp, nil
}

func (u *testUpstream) request() (*UpstreamRequest, []byte, int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.got, u.seen, u.hits
}

// run performs one exchange and reads the whole body.
func run(t *testing.T, f *Filter, req *Request, up Upstream) (*Response, []byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := f.Do(ctx, req, up)
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	body, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	<-resp.Done()
	return resp, body, rerr
}

// newFilter builds a Filter; a test that does not exercise message_timeout
// gets a generous one, since the machine may be loaded (Envoy's 200ms
// default is tested through normalized, not through scheduling luck).
func newFilter(t *testing.T, c extprocv3.ExternalProcessorClient, cfg Config) *Filter {
	t.Helper()
	if cfg.MessageTimeout == 0 {
		cfg.MessageTimeout = 10 * time.Second
	}
	f, err := New(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func mode(reqH, respH extprocfilterv3.ProcessingMode_HeaderSendMode, reqB, respB extprocfilterv3.ProcessingMode_BodySendMode) *extprocfilterv3.ProcessingMode {
	return &extprocfilterv3.ProcessingMode{RequestHeaderMode: reqH, ResponseHeaderMode: respH, RequestBodyMode: reqB, ResponseBodyMode: respB}
}

const (
	SEND     = extprocfilterv3.ProcessingMode_SEND
	SKIP     = extprocfilterv3.ProcessingMode_SKIP
	DEFAULT  = extprocfilterv3.ProcessingMode_DEFAULT
	NONE     = extprocfilterv3.ProcessingMode_NONE
	STREAMED = extprocfilterv3.ProcessingMode_STREAMED
	BUFFERED = extprocfilterv3.ProcessingMode_BUFFERED
	PARTIAL  = extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL
)

func hasEvent(tr []Event, k EventKind) bool {
	for _, e := range tr {
		if e.Kind == k {
			return true
		}
	}
	return false
}

func headerOf(hs []Header, name string) (string, bool) { return headerValue(hs, name) }

func protoHeader(hm *corev3.HeaderMap, name string) (*corev3.HeaderValue, bool) {
	for _, h := range hm.GetHeaders() {
		if h.GetKey() == name {
			return h, true
		}
	}
	return nil, false
}

var errBoom = errors.New("boom")

func lines(s ...string) string { return strings.Join(s, "\n") }

// halfClosedThenCancelled reports whether err is what a grpc-go server may
// observe after Envoy's default close (half-close immediately followed by
// RST_STREAM, ProcessorStreamImpl::close in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/common/ext_proc/grpc_client_impl.h):
// io.EOF, or Canceled when the reset overtakes the read.
func halfClosedThenCancelled(err error) bool {
	return err == io.EOF || status.Code(err) == codes.Canceled
}
