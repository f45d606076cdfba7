// Package extproc is tokenwarden's Envoy external processor: the gRPC
// ExternalProcessor service, one state machine per HTTP request, and the
// translation of admission and metering decisions into Envoy messages
// (mutations, immediate responses, dynamic metadata, mode overrides).
//
// It follows what Envoy's ext_proc filter does, as documented in
// reference/envoy-ext-proc.md: one gRPC stream per HTTP request, exactly one
// response per request message, EOF and CANCELLED as normal ends, and no use
// of the stream's context after the last response (Envoy cancels it).
package extproc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// Options configures a Server.
type Options struct {
	// Config publishes the current configuration; each request reads it once.
	Config *policy.Holder
	// Store makes admission decisions. Required.
	Store limiter.Store
	// Metrics receives every observation. Required.
	Metrics *Metrics
	Logger  *slog.Logger
	// Now is the clock used for budget windows and latency; defaults to
	// time.Now. The store keeps its own clock for decisions.
	Now func() time.Time
	// SettleTimeout bounds the store call that finishes a request after its
	// stream is gone; it runs on a context detached from the stream.
	SettleTimeout time.Duration
}

// Server implements envoy.service.ext_proc.v3.ExternalProcessor.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer
	opts     Options
	log      *slog.Logger
	idPrefix string
	idSeq    atomic.Uint64
	budgets  *budgetCache
	prefixes *prefixTracker
	// unknownPolicies remembers route policy names already warned about.
	unknownPolicies sync.Map
}

// NewServer returns a Server. It panics only on missing required options,
// which is a programming error at wiring time.
func NewServer(opts Options) *Server {
	if opts.Config == nil || opts.Store == nil || opts.Metrics == nil {
		panic("extproc.NewServer: Config, Store and Metrics are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SettleTimeout <= 0 {
		opts.SettleTimeout = 2 * time.Second
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	return &Server{opts: opts, log: opts.Logger, idPrefix: hex.EncodeToString(b[:]), budgets: newBudgetCache(), prefixes: newPrefixTracker()}
}

// Process serves one ext_proc stream, i.e. one HTTP request and its response.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	m := s.opts.Metrics
	m.ActiveStreams.Inc()
	defer m.ActiveStreams.Dec()

	x := s.newExchange(stream.Context())
	// Whatever ends the stream — the response's end, a client that went away,
	// an upstream reset, a local reply — the request is finished exactly once.
	defer x.finish()
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		resp, after := x.handle(req)
		if resp == nil {
			continue
		}
		if err := stream.Send(resp); err != nil {
			if status.Code(err) == codes.Canceled || errors.Is(err, io.EOF) || stream.Context().Err() != nil {
				return nil
			}
			return err
		}
		if after != nil {
			after()
		}
	}
}

// nextRequestID names a request's reservation. It is unique per replica and
// process lifetime, which is what settle idempotency needs; the client's
// x-request-id is only logged, since a client could reuse it.
func (s *Server) nextRequestID() string {
	return s.idPrefix + "-" + uitoa(s.idSeq.Add(1))
}

func uitoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return string(b[i:])
}

// detached returns a context for work that must outlive the stream (the
// final settle): not cancelled with it, but bounded by its own timeout.
func (s *Server) detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.opts.SettleTimeout)
}
