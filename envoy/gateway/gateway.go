// Package gateway is an HTTP front built on envoy/sim: it stands in for Envoy
// where Envoy is not installed (`tokenwarden gateway`). Every incoming request
// runs through sim.Filter.Do against the ext_proc processor, is forwarded to
// the upstream with sim.HTTPUpstream, and the response streams back to the
// client chunk by chunk as the processor releases it (flushed per chunk, so
// SSE arrives as it is released).
package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
)

// MetadataNamespace, PolicyAttribute and LaneAttribute are tokenwarden's,
// re-exported for the gateway's callers; see package contract.
const (
	MetadataNamespace = contract.MetadataNamespace
	PolicyAttribute   = contract.PolicyAttribute
	LaneAttribute     = contract.LaneAttribute
)

// Route maps a path prefix to the request attributes Envoy would evaluate for
// it, e.g. {PolicyAttribute: "batch"}.
type Route struct {
	Prefix     string
	Attributes map[string]any
}

// Options configure the gateway.
type Options struct {
	// Listen is the HTTP listen address; port 0 picks a free port (Server.Addr).
	Listen string
	// Upstream is the base URL requests are forwarded to.
	Upstream string
	// Processor is the ext_proc gRPC address (host:port). Ignored when
	// ProcessorClient is set.
	Processor       string
	ProcessorClient extprocv3.ExternalProcessorClient
	// Filter is the ext_proc filter configuration; nil means
	// DefaultFilterConfig().
	Filter *sim.Config
	// Routes is the route table: the longest matching prefix gives the
	// request attributes. RouteAttributes, when set, is used instead.
	Routes          []Route
	RouteAttributes func(*http.Request) map[string]any
	// Logger receives one access-log line per exchange (nil: slog.Default()).
	Logger *slog.Logger
	// UpstreamClient overrides the pass-through HTTP client.
	UpstreamClient *http.Client
	// BufferLimit is the per-stream buffer limit: a BUFFERED request body
	// above it is refused with 413, as Envoy does. Zero means
	// DefaultBufferLimit. Ignored when Filter is set (Filter.BufferLimit).
	BufferLimit int
	// ShutdownTimeout bounds the graceful shutdown (0 → 10s);
	// ReadHeaderTimeout bounds reading request headers (0 → 10s).
	ShutdownTimeout   time.Duration
	ReadHeaderTimeout time.Duration
}

// DefaultBufferLimit is envoy/envoy.yaml's per_connection_buffer_limit_bytes:
// Anthropic accepts request bodies up to 32 MB, so Envoy is configured to
// buffer that much, and the gateway that stands in for it does the same.
const DefaultBufferLimit = 32 << 20

// DefaultFilterConfig is the ext_proc configuration tokenwarden recommends,
// the same as envoy/envoy.yaml: request headers SEND + body BUFFERED, response headers
// SEND + body BUFFERED (the processor switches SSE responses to STREAMED with
// mode_override), trailers SKIP, allow_mode_override, message_timeout 2s,
// receiving namespace "tokenwarden", the policy attribute, fail closed.
func DefaultFilterConfig() sim.Config {
	return sim.Config{
		ProcessingMode: &extprocfilterv3.ProcessingMode{
			RequestHeaderMode:   extprocfilterv3.ProcessingMode_SEND,
			RequestBodyMode:     extprocfilterv3.ProcessingMode_BUFFERED,
			RequestTrailerMode:  extprocfilterv3.ProcessingMode_SKIP,
			ResponseHeaderMode:  extprocfilterv3.ProcessingMode_SEND,
			ResponseBodyMode:    extprocfilterv3.ProcessingMode_BUFFERED,
			ResponseTrailerMode: extprocfilterv3.ProcessingMode_SKIP,
		},
		AllowModeOverride:   true,
		MessageTimeout:      2 * time.Second,
		MaxMessageTimeout:   30 * time.Second,
		FailureModeAllow:    false,
		ReceivingNamespaces: []string{MetadataNamespace},
		RequestAttributes:   []string{PolicyAttribute, LaneAttribute},
		ClusterName:         "llm_extproc",
		BufferLimit:         DefaultBufferLimit,
		NoTrace:             true,
		NoRecordBody:        true,
	}
}

// Server is a running gateway.
type Server struct {
	addr     string
	http     *http.Server
	conn     *grpc.ClientConn
	filter   *sim.Filter
	upstream sim.Upstream
	opts     Options
	log      *slog.Logger
	done     chan struct{}
	err      error
}

// Start listens and serves until ctx is done, then shuts down gracefully
// (bounded by ShutdownTimeout). Use Addr for the bound address and Wait for
// the end.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Listen == "" || opts.Upstream == "" || (opts.Processor == "" && opts.ProcessorClient == nil) {
		return nil, errors.New("gateway: --listen, --upstream and --processor are required")
	}
	cfg := DefaultFilterConfig()
	if opts.BufferLimit > 0 {
		cfg.BufferLimit = opts.BufferLimit
	}
	if opts.Filter != nil {
		cfg = *opts.Filter
	}
	up, err := sim.NewHTTPUpstream(opts.Upstream, opts.UpstreamClient)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	s := &Server{opts: opts, upstream: up, log: opts.Logger, done: make(chan struct{})}
	if s.log == nil {
		s.log = slog.Default()
	}
	client := opts.ProcessorClient
	if client == nil {
		// Flow control is Envoy's (here: the buffer limit), not gRPC's
		// message size: allow any size, as Envoy's own gRPC client does
		// (EnvoyGrpc.max_receive_message_length defaults to unlimited,
		// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/grpc_service.proto).
		s.conn, err = grpc.NewClient(opts.Processor,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)))
		if err != nil {
			return nil, fmt.Errorf("gateway: processor %s: %w", opts.Processor, err)
		}
		client = extprocv3.NewExternalProcessorClient(s.conn)
	}
	if s.filter, err = sim.New(client, cfg); err != nil {
		s.closeConn()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	lis, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		s.closeConn()
		return nil, fmt.Errorf("gateway: listen: %w", err)
	}
	s.addr = lis.Addr().String()
	rht := opts.ReadHeaderTimeout
	if rht <= 0 {
		rht = 10 * time.Second
	}
	// No write timeout: SSE responses last as long as the generation.
	s.http = &http.Server{Handler: s, ReadHeaderTimeout: rht, IdleTimeout: 2 * time.Minute}
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.http.Serve(lis) }()
	go s.lifecycle(ctx, serveErr)
	return s, nil
}

func (s *Server) closeConn() {
	if s.conn != nil {
		_ = s.conn.Close()
	}
}

func (s *Server) lifecycle(ctx context.Context, serveErr <-chan error) {
	defer close(s.done)
	select {
	case err := <-serveErr:
		s.err = fmt.Errorf("gateway: serve: %w", err)
		s.closeConn()
		return
	case <-ctx.Done():
	}
	st := s.opts.ShutdownTimeout
	if st <= 0 {
		st = 10 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), st)
	defer cancel()
	if err := s.http.Shutdown(sctx); err != nil {
		// Streams still open after the grace period are cut.
		_ = s.http.Close()
		s.err = fmt.Errorf("gateway: shutdown: %w", err)
	}
	<-serveErr
	s.closeConn()
}

// Addr is the bound listen address (host:port).
func (s *Server) Addr() string { return s.addr }

// Wait blocks until the server has shut down and returns the first error.
func (s *Server) Wait() error {
	<-s.done
	return s.err
}

// Run is Start followed by Wait: it returns after ctx is done and the
// graceful shutdown finished.
func Run(ctx context.Context, opts Options) error {
	s, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	return s.Wait()
}

// ServeHTTP runs one exchange through the filter.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	req := &sim.Request{
		Method:     r.Method,
		Path:       r.URL.RequestURI(),
		Scheme:     "http",
		Authority:  r.Host,
		Headers:    sim.FromHTTPHeader(r.Header),
		Attributes: s.attributes(r),
	}
	if r.TLS != nil {
		req.Scheme = "https"
	}
	if r.ContentLength > 0 || (r.ContentLength == 0 && r.Header.Get("Content-Length") != "") {
		req.Headers = append(req.Headers, sim.Header{Name: "content-length", Value: strconv.FormatInt(r.ContentLength, 10)})
	}
	if r.ContentLength != 0 {
		req.BodyStream = r.Body
	}
	resp, err := s.filter.Do(r.Context(), req, s.upstream)
	if err != nil {
		// Only a client that went away (or half-closed) before response
		// headers gets here. Envoy answers nothing then — it resets the
		// stream — and logs response code 0 with response flag DC
		// (downstream connection termination); so does the gateway, rather
		// than letting net/http send an empty 200.
		abort(w)
		s.log.LogAttrs(context.WithoutCancel(r.Context()), slog.LevelInfo, "access", slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.Int("status", 0), slog.String("response_flags", flagDownstreamTermination), slog.String("error", err.Error()),
			slog.Duration("duration", time.Since(start)))
		return
	}
	if resp.LocalReply {
		renderLocalReply(r.URL.Path, resp)
	}
	h := w.Header()
	for _, hd := range resp.Headers {
		h.Add(hd.Name, hd.Value)
	}
	w.WriteHeader(resp.Status)
	n, copyErr := copyFlushing(w, resp.Body)
	if errors.Is(copyErr, sim.ErrStreamReset) {
		abort(w)
	}
	_ = resp.Body.Close()
	<-resp.Done()
	s.accessLog(r, resp, n, copyErr, time.Since(start))
}

// flagDownstreamTermination is Envoy's %RESPONSE_FLAGS% for a client that
// went away (https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#command-operators).
const flagDownstreamTermination = "DC"

// copyFlushing writes each released chunk and flushes it at once.
func copyFlushing(w http.ResponseWriter, body io.Reader) (int64, error) {
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	var total int64
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr // client gone: closing the body cancels the exchange
			}
			total += int64(n)
			if ferr := rc.Flush(); ferr != nil {
				return total, ferr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// abort makes the client see a reset, as Envoy's stream reset does: on
// HTTP/1 the connection is closed mid-body so the chunked framing never
// completes.
func abort(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		_ = conn.Close()
	}
}

func (s *Server) attributes(r *http.Request) map[string]any {
	if s.opts.RouteAttributes != nil {
		return s.opts.RouteAttributes(r)
	}
	best := -1
	var attrs map[string]any
	for _, rt := range s.opts.Routes {
		if strings.HasPrefix(r.URL.Path, rt.Prefix) && len(rt.Prefix) > best {
			best, attrs = len(rt.Prefix), rt.Attributes
		}
	}
	return attrs
}

// accessLog writes one line per exchange with the tokenwarden dynamic
// metadata fields (never bodies or credentials).
func (s *Server) accessLog(r *http.Request, resp *sim.Response, n int64, copyErr error, d time.Duration) {
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", resp.Status),
		slog.Int64("bytes", n),
		slog.Duration("duration", d),
		slog.Bool("local_reply", resp.LocalReply),
	}
	if resp.Details != "" {
		attrs = append(attrs, slog.String("details", resp.Details))
	}
	if copyErr != nil {
		attrs = append(attrs, slog.String("error", copyErr.Error()))
		if !errors.Is(copyErr, sim.ErrStreamReset) {
			attrs = append(attrs, slog.String("response_flags", flagDownstreamTermination))
		}
	}
	if ns := resp.DynamicMetadata().GetFields()[MetadataNamespace].GetStructValue(); ns != nil {
		attrs = append(attrs, slog.Attr{Key: MetadataNamespace, Value: slog.GroupValue(structAttrs(ns)...)})
	}
	s.log.LogAttrs(context.WithoutCancel(r.Context()), slog.LevelInfo, "access", attrs...)
}

func structAttrs(st *structpb.Struct) []slog.Attr {
	keys := make([]string, 0, len(st.GetFields()))
	for k := range st.GetFields() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		v := st.GetFields()[k]
		switch x := v.GetKind().(type) {
		case *structpb.Value_StringValue:
			out = append(out, slog.String(k, x.StringValue))
		case *structpb.Value_NumberValue:
			out = append(out, slog.Float64(k, x.NumberValue))
		case *structpb.Value_BoolValue:
			out = append(out, slog.Bool(k, x.BoolValue))
		case *structpb.Value_StructValue:
			out = append(out, slog.Attr{Key: k, Value: slog.GroupValue(structAttrs(x.StructValue)...)})
		default:
			out = append(out, slog.Any(k, v.AsInterface()))
		}
	}
	return out
}
