// Package extproc is tokenwarden's Envoy adapter: the gRPC
// ExternalProcessor service. Each ext_proc stream (one HTTP request and its
// response) runs as one stream state machine under a panic guard, hands what
// Envoy sent to the Envoy-free lifecycle in package gate, and turns the
// gate's answers into ProcessingResponses: mutations, immediate responses,
// mode overrides and dynamic metadata.
//
// It follows what Envoy's ext_proc filter does
// (https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/ext_proc_filter):
// one gRPC stream per HTTP request, exactly one response per request
// message, EOF and CANCELLED as normal ends, and no use of the stream's
// context after the last response, because Envoy cancels it.
package extproc

import (
	"cmp"
	"errors"
	"io"
	"log/slog"
	"runtime/debug"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/extproc/observe"
)

// Options configures a Server.
type Options struct {
	// Gate runs the request lifecycle. Required.
	Gate *gate.Gate
	// Metrics records streams and phases. Required.
	Metrics *observe.Metrics
	Logger  *slog.Logger
}

// Server implements envoy.service.ext_proc.v3.ExternalProcessor.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer
	gate    *gate.Gate
	metrics *observe.Metrics
	log     *slog.Logger
	errLog  gate.Sampler
	// open counts streams whose handler has not returned, settle included.
	open atomic.Int64
}

// NewServer returns a Server.
func NewServer(o Options) (*Server, error) {
	if o.Gate == nil || o.Metrics == nil {
		return nil, errors.New("extproc: Options.Gate and Options.Metrics are required")
	}
	return &Server{gate: o.Gate, metrics: o.Metrics, log: cmp.Or(o.Logger, slog.Default())}, nil
}

// Process serves one ext_proc stream, i.e. one HTTP request and its
// response. Whatever ends the stream — the response's end, a client that went
// away, an upstream reset, a local reply, a message out of order, a panic —
// the request's reservation is settled exactly once, and a panic ends only
// this stream, with codes.Internal.
func (s *Server) Process(grpcStream extprocv3.ExternalProcessor_ProcessServer) (err error) {
	s.open.Add(1)
	defer s.open.Add(-1) // last: after the stream's end has settled it
	s.metrics.StreamOpened()
	defer s.metrics.StreamClosed()
	st := &stream{gate: s.gate, metrics: s.metrics, log: s.log, ctx: grpcStream.Context(), send: grpcStream.Send}
	defer func() {
		if p := recover(); p != nil {
			stack := debug.Stack()
			if hp, ok := p.(*helperPanic); ok {
				p, stack = hp.value, hp.stack
			}
			s.metrics.StreamError(observe.StreamPanic)
			s.log.Error("processor panic; the stream ends with Internal and its request is settled",
				"panic", p, "state", st.state.String(), "stack", string(stack))
			err = status.Error(codes.Internal, "tokenwarden: internal error")
		}
		st.end()
	}()
	// One request message for the stream, each Recv decoding into it (the
	// codec and protobuf-go reset it first): Recv allocated one a message.
	// Only the message's own struct is reused; what a handled message
	// pointed to (headers, body, metadata, which the gate may keep) is left
	// alone, and nothing keeps the message itself past handle.
	req := new(extprocv3.ProcessingRequest)
	for {
		rerr := grpcStream.RecvMsg(req)
		if rerr != nil {
			if errors.Is(rerr, io.EOF) || status.Code(rerr) == codes.Canceled {
				return nil
			}
			return rerr
		}
		resp, settle, perr := st.handle(req)
		if perr == errGone {
			return nil
		}
		if perr != nil {
			s.metrics.StreamError(observe.StreamProtocol)
			if n, ok := s.errLog.Allow(time.Now()); ok {
				s.log.Warn("ext_proc stream refused", "state", st.state.String(), "err", perr, "suppressed_since_last", n)
			}
			return perr
		}
		if err := grpcStream.Send(resp); err != nil {
			if status.Code(err) == codes.Canceled || errors.Is(err, io.EOF) || grpcStream.Context().Err() != nil {
				return nil
			}
			return err
		}
		if settle {
			// After the answer is sent, so the round trip is not on the
			// response's latency.
			st.x.Settle()
		}
	}
}

// WaitStreams waits until every stream handler has returned — each one's
// reservation settled (or journaled by the store) — for at most timeout; it
// reports whether they all did. gRPC's Stop returns before handlers whose
// streams it cut have run their end, so shutdown calls this before it closes
// the store the settles go to.
func (s *Server) WaitStreams(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for s.open.Load() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// OpenStreams reports the stream handlers still running.
func (s *Server) OpenStreams() int64 { return s.open.Load() }
