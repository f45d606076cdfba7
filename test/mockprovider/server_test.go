package mockprovider

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRunServesUntilCancelled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Options{Listen: addr, ShutdownTimeout: 2 * time.Second}) }()

	var resp *http.Response
	for range 200 { // Run listens asynchronously; wait until it answers.
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://"+addr+"/mock/ledger", nil)
		if resp, err = http.DefaultClient.Do(req); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Run never answered: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("ledger status %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v after cancellation", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancellation")
	}
}

func TestStartAddressInUse(t *testing.T) {
	s := startMock(t, Options{})
	if _, err := Start(context.Background(), Options{Listen: s.Addr()}); err == nil {
		t.Fatal("second Start on the same address succeeded")
	}
}

// TestShutdownEndsDelayedStreams: a stream stuck in a long scripted delay
// does not hold shutdown past its timeout.
func TestShutdownEndsDelayedStreams(t *testing.T) {
	s, err := Start(context.Background(), Options{ShutdownTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	go func() {
		r, _ := http.NewRequest(http.MethodPost, s.URL()+"/v1/messages", strings.NewReader(streamReq))
		r.Header = with(anthropicHeaders(), "x-mock-chunk-delay", "10s")
		resp, err := http.DefaultClient.Do(r)
		close(started) // headers arrived: the handler is inside its stream
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("stream never started")
	}
	err = s.Shutdown(context.Background())
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a stuck stream returned %v, want a deadline error", err)
	}
	if err := s.Wait(); err != nil {
		t.Errorf("Wait: %v", err)
	}
}
