package sim

import (
	"context"
	"errors"
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// procStream is the one gRPC stream of an exchange: Envoy opens at most one
// ExternalProcessor/Process stream per HTTP stream, lazily (Filter::openStream
// in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc). Sends go
// through a dedicated goroutine with an unbounded queue, because Envoy's async
// client never blocks the dispatcher on flow control; the event loop must keep
// running its timers even when the processor stops reading.
type procStream struct {
	cs     extprocv3.ExternalProcessor_ProcessClient
	cancel context.CancelFunc

	mu      sync.Mutex
	queue   []*extprocv3.ProcessingRequest
	closing bool // half-close requested: sender drains, CloseSends, then cancels
	wake    chan struct{}

	trace func(Event) // records half-close and cancel in the exchange trace

	recvDone   chan struct{} // closed when the receive goroutine exits
	senderDone chan struct{} // closed when the sender (incl. the close sequence) exits
}

// errOpenTimeout: the stream could not be opened within StreamOpenTimeout.
var errOpenTimeout = errors.New("ext_proc stream open timed out")

type recvResult struct {
	msg *extprocv3.ProcessingResponse
	err error
}

// openStream starts Process with the cluster name as :authority and the
// initial metadata (EnvoyGrpc.authority defaults to cluster_name and
// GrpcService.initial_metadata is sent as request metadata,
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/grpc_service.proto).
// The stream context is detached from the
// client context: Envoy closes it explicitly (half-close, then reset), which
// is what the server must observe, not an early cancellation.
func openStream(parent context.Context, client extprocv3.ExternalProcessorClient, cfg *Config,
	out chan<- recvResult, stop <-chan struct{}, trace func(Event)) (*procStream, error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	if len(cfg.InitialMetadata) > 0 {
		ctx = metadata.NewOutgoingContext(ctx, metadata.New(cfg.InitialMetadata))
	}
	var opts []grpc.CallOption
	if cfg.ClusterName != "" {
		opts = append(opts, grpc.CallAuthority(cfg.ClusterName))
	}
	// grpc-go blocks in Process while the connection is still connecting.
	// Envoy's async client never blocks and its connection to the ext_proc
	// cluster is normally pooled and up, so the message timer (armed after
	// the open here) would not include a connect; a separate, explicit bound
	// keeps a processor that never answers the connect from hanging us.
	type opened struct {
		cs  extprocv3.ExternalProcessor_ProcessClient
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		cs, err := client.Process(ctx, opts...)
		ch <- opened{cs, err}
	}()
	t := time.NewTimer(cfg.StreamOpenTimeout)
	defer t.Stop()
	var cs extprocv3.ExternalProcessor_ProcessClient
	select {
	case o := <-ch:
		if o.err != nil {
			cancel()
			return nil, o.err
		}
		cs = o.cs
	case <-t.C:
		cancel() // Process returns promptly once its context is cancelled
		return nil, errOpenTimeout
	}
	s := &procStream{cs: cs, cancel: cancel, wake: make(chan struct{}, 1), trace: trace,
		recvDone: make(chan struct{}), senderDone: make(chan struct{})}
	go s.recvLoop(out, stop)
	go s.sendLoop(cfg.Close, cfg.RemoteCloseTimeout)
	return s, nil
}

func (s *procStream) recvLoop(out chan<- recvResult, stop <-chan struct{}) {
	defer close(s.recvDone)
	for {
		m, err := s.cs.Recv()
		select {
		case out <- recvResult{m, err}:
		case <-stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// send queues m; it never blocks.
func (s *procStream) send(m *extprocv3.ProcessingRequest) {
	s.mu.Lock()
	s.queue = append(s.queue, m)
	s.mu.Unlock()
	s.poke()
}

func (s *procStream) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// close requests Envoy's close sequence: everything queued is sent, then
// half-close, then (after the graceful wait, if selected) cancel.
func (s *procStream) close() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.poke()
}

func (s *procStream) sendLoop(mode CloseMode, graceful time.Duration) {
	defer close(s.senderDone)
	defer func() {
		s.cancel() // Envoy's resetStream
		s.trace(Event{Kind: EventCancel})
	}()
	failed := false
	for {
		s.mu.Lock()
		q := s.queue
		s.queue = nil
		closing := s.closing
		s.mu.Unlock()
		for _, m := range q {
			if failed {
				break
			}
			// A Send error means the stream is broken; Recv reports the status.
			if err := s.cs.Send(m); err != nil {
				failed = true
			}
		}
		if closing && len(q) == 0 {
			break
		}
		if len(q) == 0 {
			<-s.wake
		}
	}
	_ = s.cs.CloseSend() // Envoy's closeStream: END_STREAM on the gRPC stream
	s.trace(Event{Kind: EventHalfClose})
	if mode == CloseGraceful {
		t := time.NewTimer(graceful)
		defer t.Stop()
		select {
		case <-s.recvDone: // server returned from Process
		case <-t.C:
		}
	}
}
