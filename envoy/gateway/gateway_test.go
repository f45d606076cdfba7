package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
)

// scriptedProcessor plays tokenwarden's protocol shape: it reads the policy
// attribute, writes metadata, switches SSE responses to STREAMED, answers
// every chunk unchanged and reports usage on the last one. A request with
// x-deny gets an ImmediateResponse 429.
type scriptedProcessor struct {
	extprocv3.UnimplementedExternalProcessorServer
	mu       sync.Mutex
	policies []string
	chunks   int
	ended    chan error // one per stream: how the stream ended
}

func (p *scriptedProcessor) Process(s extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		m, err := s.Recv()
		if err != nil {
			p.ended <- err
			return nil
		}
		var r *extprocv3.ProcessingResponse
		switch v := m.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			pol := m.GetAttributes()["envoy.filters.http.ext_proc"].GetFields()[PolicyAttribute].GetStringValue()
			p.mu.Lock()
			p.policies = append(p.policies, pol)
			p.mu.Unlock()
			for _, h := range v.RequestHeaders.GetHeaders().GetHeaders() {
				if h.GetKey() == "x-deny" {
					r = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
						Status: &typev3.HttpStatus{Code: 429}, Body: []byte(`{"type":"error"}`),
						Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
							{Header: &corev3.HeaderValue{Key: "content-type", RawValue: []byte("application/json")}}}}}}}
				}
			}
			if r == nil {
				md, _ := structpb.NewStruct(map[string]any{MetadataNamespace: map[string]any{"tenant": "acme", "policy": pol}})
				r = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}, DynamicMetadata: md}
			}
		case *extprocv3.ProcessingRequest_RequestBody:
			r = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			r = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
			for _, h := range v.ResponseHeaders.GetHeaders().GetHeaders() {
				if h.GetKey() == "content-type" && strings.HasPrefix(string(h.GetRawValue()), "text/event-stream") {
					r.ModeOverride = &extprocfilterv3.ProcessingMode{ResponseBodyMode: extprocfilterv3.ProcessingMode_STREAMED}
				}
			}
		case *extprocv3.ProcessingRequest_ResponseBody:
			p.mu.Lock()
			p.chunks++
			p.mu.Unlock()
			r = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
			if bytes.Contains(v.ResponseBody.GetBody(), []byte("RESET")) {
				r = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
					Status: &typev3.HttpStatus{Code: 500}}}}
			}
			if v.ResponseBody.GetEndOfStream() {
				r.DynamicMetadata, _ = structpb.NewStruct(map[string]any{MetadataNamespace: map[string]any{"output_tokens": 17}})
			}
		}
		if err := s.Send(r); err != nil {
			p.ended <- err
			return nil
		}
	}
}

func startProcessor(t *testing.T) (*scriptedProcessor, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	p := &scriptedProcessor{ended: make(chan error, 16)}
	extprocv3.RegisterExternalProcessorServer(srv, p)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return p, lis.Addr().String()
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func startGateway(t *testing.T, upstream, processor string) (*Server, *syncBuffer, context.CancelFunc) {
	t.Helper()
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Start(ctx, Options{
		Listen: "127.0.0.1:0", Upstream: upstream, Processor: processor,
		Routes: []Route{{Prefix: "/", Attributes: map[string]any{PolicyAttribute: "default"}},
			{Prefix: "/v1/batch", Attributes: map[string]any{PolicyAttribute: "batch"}}},
		Logger:          slog.New(slog.NewJSONHandler(logs, nil)),
		ShutdownTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := s.Wait(); err != nil {
			t.Errorf("Wait: %v", err)
		}
	})
	return s, logs, cancel
}

// TestGatewayStreamsSSE: an SSE response reaches the client event by event
// as the processor releases it; the access log carries the metadata.
func TestGatewayStreamsSSE(t *testing.T) {
	next := make(chan struct{})
	upstreamBody := make(chan []byte, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		upstreamBody <- b
		w.Header().Set("content-type", "text/event-stream")
		w.WriteHeader(200)
		for i, ev := range []string{"event: message_start\ndata: {}\n\n", "event: message_delta\ndata: {\"usage\":{}}\n\n", "event: message_stop\ndata: {}\n\n"} {
			if i > 0 {
				<-next // the next event only once the client saw the previous one
			}
			_, _ = io.WriteString(w, ev)
			w.(http.Flusher).Flush()
		}
	}))
	defer up.Close()
	p, paddr := startProcessor(t)
	gw, logs, _ := startGateway(t, up.URL, paddr)

	resp, err := http.Post("http://"+gw.Addr()+"/v1/batch/messages", "application/json", strings.NewReader(`{"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("content-type") != "text/event-stream" {
		t.Fatalf("status %d headers %v", resp.StatusCode, resp.Header)
	}
	br := bufio.NewReader(resp.Body)
	readEvent := func() string {
		var sb strings.Builder
		for {
			l, err := br.ReadString('\n')
			sb.WriteString(l)
			if err != nil || l == "\n" {
				return sb.String()
			}
		}
	}
	if ev := readEvent(); !strings.HasPrefix(ev, "event: message_start") {
		t.Fatalf("first event %q", ev)
	}
	next <- struct{}{}
	if ev := readEvent(); !strings.HasPrefix(ev, "event: message_delta") {
		t.Fatalf("second event %q", ev)
	}
	next <- struct{}{}
	if ev := readEvent(); !strings.HasPrefix(ev, "event: message_stop") {
		t.Fatalf("third event %q", ev)
	}
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Fatalf("trailing bytes %q", rest)
	}
	if b := <-upstreamBody; string(b) != `{"stream":true}` {
		t.Errorf("upstream body %q", b)
	}
	p.mu.Lock()
	pol, chunks := p.policies, p.chunks
	p.mu.Unlock()
	if len(pol) != 1 || pol[0] != "batch" || chunks < 3 {
		t.Errorf("policies %v chunks %d", pol, chunks)
	}
	var line map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for line == nil && time.Now().Before(deadline) {
		for _, l := range logs.lines() {
			if l["msg"] == "access" {
				line = l
			}
		}
		if line == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	tw, _ := line[MetadataNamespace].(map[string]any)
	if line["status"] != float64(200) || tw["tenant"] != "acme" || tw["output_tokens"] != float64(17) || tw["policy"] != "batch" {
		t.Errorf("access log %v", line)
	}
}

// TestGatewayImmediateResponse: a denial comes back as the processor built it.
func TestGatewayImmediateResponse(t *testing.T) {
	var hits atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer up.Close()
	_, paddr := startProcessor(t)
	gw, _, _ := startGateway(t, up.URL, paddr)
	req, _ := http.NewRequest("POST", "http://"+gw.Addr()+"/v1/messages", strings.NewReader(`{}`))
	req.Header.Set("x-deny", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("content-type") != "application/json" || string(body) != `{"type":"error"}` || hits.Load() != 0 {
		t.Fatalf("status %d ct %q body %q hits %d", resp.StatusCode, resp.Header.Get("content-type"), body, hits.Load())
	}
}

// TestGatewayClientDisconnect: a client going away mid-stream cancels the
// exchange: the processor's stream ends and the upstream request is
// cancelled.
func TestGatewayClientDisconnect(t *testing.T) {
	upCancelled := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "text/event-stream")
		_, _ = io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(upCancelled)
	}))
	defer up.Close()
	p, paddr := startProcessor(t)
	gw, _, _ := startGateway(t, up.URL, paddr)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+gw.Addr()+"/v1/messages", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _ := resp.Body.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "data: first") {
		t.Fatalf("got %q", buf[:n])
	}
	cancel()
	resp.Body.Close()
	select {
	case <-upCancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("upstream request not cancelled")
	}
	select {
	case <-p.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("processor stream not closed")
	}
}

// TestRunReturnsOnCancel: Run shuts down when its context ends.
func TestRunReturnsOnCancel(t *testing.T) {
	_, paddr := startProcessor(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Listen: "127.0.0.1:0", Upstream: "http://127.0.0.1:1", Processor: paddr})
	}()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
	}
}

// TestStartValidates: missing addresses are an error, not a panic.
func TestStartValidates(t *testing.T) {
	for _, o := range []Options{{}, {Listen: "127.0.0.1:0"}, {Listen: "127.0.0.1:0", Upstream: "ftp://x", Processor: "127.0.0.1:1"}} {
		if _, err := Start(context.Background(), o); err == nil {
			t.Errorf("Start(%+v) succeeded", o)
		}
	}
}

// TestGatewayResetMidStream: an ImmediateResponse after the response headers
// went out resets the stream; the client sees a truncated body, not a clean
// end (DownstreamFilterManager::sendLocalReply can only reset once headers
// went, https://github.com/envoyproxy/envoy/blob/main/source/common/http/filter_manager.cc).
func TestGatewayResetMidStream(t *testing.T) {
	gotHeaders := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-gotHeaders // the client has the headers: the rest is STREAMED
		_, _ = io.WriteString(w, "data: RESET\n\n")
		w.(http.Flusher).Flush()
	}))
	defer up.Close()
	_, paddr := startProcessor(t)
	gw, _, _ := startGateway(t, up.URL, paddr)
	resp, err := http.Get("http://" + gw.Addr() + "/v1/messages")
	close(gotHeaders)
	if err != nil {
		t.Fatal(err)
	}
	body, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if rerr == nil || strings.Contains(string(body), "RESET") {
		t.Fatalf("body %q err %v: want a truncated stream", body, rerr)
	}
}

// TestGatewayBufferLimitLikeEnvoy: the default buffer limit is envoy.yaml's
// 32 MiB, so a 2 MiB body goes through; a body over the limit is refused
// with a 413 in the called API's error shape and never reaches the upstream.
func TestGatewayBufferLimitLikeEnvoy(t *testing.T) {
	var upstreamHits atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamHits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	defer up.Close()
	_, paddr := startProcessor(t)
	gw, _, _ := startGateway(t, up.URL, paddr)
	post := func(path string, n int) (*http.Response, []byte) {
		resp, err := http.Post("http://"+gw.Addr()+path, "application/json", bytes.NewReader(bytes.Repeat([]byte("a"), n)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	if resp, _ := post("/v1/messages", 2<<20); resp.StatusCode != 200 || upstreamHits.Load() != 1 {
		t.Fatalf("a 2 MiB body: status %d, upstream hits %d (Envoy's configured limit is 32 MiB)", resp.StatusCode, upstreamHits.Load())
	}
	for path, wantType := range map[string]string{"/v1/messages": "request_too_large", "/v1/chat/completions": "invalid_request_error"} {
		resp, body := post(path, DefaultBufferLimit+1)
		var e struct {
			Type  string `json:"type"`
			Error struct {
				Type    string `json:"type"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if resp.StatusCode != 413 || resp.Header.Get("content-type") != "application/json" || json.Unmarshal(body, &e) != nil ||
			e.Error.Type != wantType || e.Error.Message != TooLargeMessage {
			t.Errorf("%s over the limit: %d %s %q", path, resp.StatusCode, resp.Header.Get("content-type"), body)
		}
	}
	if upstreamHits.Load() != 1 {
		t.Errorf("a refused body reached the upstream (%d hits)", upstreamHits.Load())
	}
}

// TestGatewayClientHalfClose: a client that sends its request and
// half-closes before the answer gets no fabricated 200; the exchange is
// logged as Envoy logs it (response code 0, flag DC).
func TestGatewayClientHalfClose(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, `{"late":true}`)
	}))
	defer up.Close()
	defer close(release)
	_, paddr := startProcessor(t)
	gw, logs, _ := startGateway(t, up.URL, paddr)
	conn, err := net.Dial("tcp", gw.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
	_ = conn.(*net.TCPConn).CloseWrite()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(conn)
	if len(got) != 0 {
		t.Fatalf("a half-closed client was answered: %q", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, l := range logs.lines() {
			if l["msg"] == "access" && l["status"] == 0.0 && l["response_flags"] == "DC" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no access line with status 0 and flag DC: %v", logs.lines())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
