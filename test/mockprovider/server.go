package mockprovider

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Server is a running mock provider.
type Server struct {
	provider *Provider
	srv      *http.Server
	ln       net.Listener
	done     chan error
	cancel   context.CancelFunc // ends the handlers' base context
	timeout  time.Duration

	shutdownOnce sync.Once
	shutdownErr  error
}

// Start listens on opts.Listen (127.0.0.1:0 by default) and serves in the
// background until ctx ends or Shutdown is called.
func Start(ctx context.Context, opts Options) (*Server, error) {
	opts = opts.withDefaults()
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("mock-provider listen %s: %w", opts.Listen, err)
	}
	p := New(opts)
	base, cancel := context.WithCancel(context.Background())
	s := &Server{
		provider: p,
		ln:       ln,
		done:     make(chan error, 1),
		cancel:   cancel,
		timeout:  opts.ShutdownTimeout,
		srv: &http.Server{
			Handler:           p,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       60 * time.Second,
			// No WriteTimeout: scripted streams may legitimately take long.
			IdleTimeout: 120 * time.Second,
			BaseContext: func(net.Listener) context.Context { return base },
		},
	}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	go func() {
		select {
		case <-ctx.Done():
			_ = s.Shutdown(context.Background())
		case <-base.Done():
		}
	}()
	return s, nil
}

// Addr is the listening address, e.g. 127.0.0.1:41234.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the base URL to point SDK clients at, e.g. http://127.0.0.1:41234.
func (s *Server) URL() string { return "http://" + s.Addr() }

// Provider is the handler behind the server (ledger, reset).
func (s *Server) Provider() *Provider { return s.provider }

// Shutdown stops accepting, waits up to the configured ShutdownTimeout (or
// ctx, whichever ends first) for in-flight responses, then cancels the rest
// (their request contexts end, so scripted delays stop) and closes.
// Later calls return the first call's result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		ctx, cancel := context.WithTimeout(ctx, s.timeout)
		defer cancel()
		err := s.srv.Shutdown(ctx)
		s.cancel()
		if err != nil {
			err = errors.Join(fmt.Errorf("mock-provider graceful shutdown: %w", err), s.srv.Close())
		}
		s.shutdownErr = err
	})
	return s.shutdownErr
}

// Wait blocks until the server has stopped and returns the serve error.
func (s *Server) Wait() error {
	err := <-s.done
	s.done <- err // let later callers see it too
	return err
}

// Run serves until ctx ends, then shuts down gracefully within
// opts.ShutdownTimeout.
func Run(ctx context.Context, opts Options) error {
	s, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	opts.withDefaults().Logger.Info("mock-provider listening", "addr", s.Addr())
	<-ctx.Done()
	shutdownErr := s.Shutdown(context.Background())
	return errors.Join(shutdownErr, s.Wait())
}
