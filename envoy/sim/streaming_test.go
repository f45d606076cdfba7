package sim

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// waitFor returns a hook and a function that blocks until the hook saw an
// event containing want.
func hookWaiter() (func(string), func(t *testing.T, want string)) {
	ch := make(chan string, 256)
	hook := func(s string) { ch <- s }
	wait := func(t *testing.T, want string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case s := <-ch:
				if strings.Contains(s, want) {
					return
				}
			case <-deadline:
				t.Fatalf("loop never saw %q", want)
			}
		}
	}
	return hook, wait
}

// TestStreamedPipeliningAndRelease: chunk n+1 is sent before reply n; each
// chunk is released only when its reply arrives, in order; empty reply =
// unchanged, body = replace, clear_body = drop (Filter::handleDataStreamedMode in
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc;
// ProcessorState::handleStreamedBodyResponse in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc).
func TestStreamedPipeliningAndRelease(t *testing.T) {
	got := make(chan *extprocv3.ProcessingRequest, 16)
	release := make(chan *extprocv3.ProcessingResponse, 16)
	c, _ := startProc(t, func(s *pstream) error {
		m := s.recv()
		_ = s.Send(passthrough(m)) // response_headers
		go func() {
			for r := range release {
				_ = s.Send(r)
			}
		}()
		for {
			m := s.recv()
			if m == nil {
				return nil
			}
			got <- m
		}
	})
	f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SEND, NONE, STREAMED)})
	pr, pw := io.Pipe()
	resp, err := f.Do(t.Context(), &Request{Method: "GET", Path: "/"}, &testUpstream{stream: pr})
	if err != nil {
		t.Fatal(err)
	}
	next := func() *extprocv3.HttpBody {
		select {
		case m := <-got:
			return m.GetResponseBody()
		case <-time.After(10 * time.Second):
			t.Fatal("no body message")
		}
		return nil
	}
	_, _ = pw.Write([]byte("one "))
	b1 := next()
	_, _ = pw.Write([]byte("two "))
	b2 := next() // sent although chunk 1 is unanswered: pipelined
	if string(b1.GetBody()) != "one " || string(b2.GetBody()) != "two " {
		t.Fatalf("chunks %q %q", b1.GetBody(), b2.GetBody())
	}
	if n := resp.x.down.buffered(); n != 0 {
		t.Fatalf("%d bytes released before any reply", n)
	}
	// Reply to chunk 1 with a replacement: only it is released.
	release <- reply(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{}},
		&extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte("ONE ")}}})
	buf := make([]byte, 64)
	n, _ := io.ReadFull(resp.Body, buf[:4])
	if string(buf[:n]) != "ONE " {
		t.Fatalf("first release %q", buf[:n])
	}
	// Chunk 2 dropped with clear_body, then the end: the last (empty) chunk.
	release <- reply(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{}},
		&extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_ClearBody{ClearBody: true}}})
	_, _ = pw.Write([]byte("three"))
	if b := next(); string(b.GetBody()) != "three" || b.GetEndOfStream() {
		t.Fatalf("chunk 3 = %v", b)
	}
	pw.Close()
	if b := next(); len(b.GetBody()) != 0 || !b.GetEndOfStream() {
		t.Fatalf("last chunk = %v, want empty end_of_stream", b)
	}
	release <- passthrough(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{}})
	release <- passthrough(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{}})
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "three" {
		t.Fatalf("rest %q %v", rest, err)
	}
	close(release)
	<-resp.Done()
}

// TestStreamedHeaderMutationIgnored: header mutations in STREAMED body
// responses are ignored; content-length is removed from forwarded headers.
func TestStreamedHeaderMutationIgnored(t *testing.T) {
	c, _ := startProc(t, replyAll(func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if m.GetResponseBody() != nil {
			return reply(m, &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setRaw("x-late", "1")}}})
		}
		return reply(m, &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setRaw("content-length", "1")}}})
	}))
	f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SEND, NONE, STREAMED)})
	pr, pw := io.Pipe()
	resp, err := f.Do(t.Context(), &Request{Method: "GET", Path: "/"}, &testUpstream{stream: pr, headers: []Header{{"content-length", "3"}}})
	if err != nil {
		t.Fatal(err)
	}
	// Written only after the headers went: a real streamed chunk, not a
	// body completed during the header round trip.
	go func() {
		_, _ = pw.Write([]byte("abc"))
		pw.Close()
	}()
	body, err := io.ReadAll(resp.Body)
	<-resp.Done()
	if err != nil || string(body) != "abc" {
		t.Fatalf("body %q %v", body, err)
	}
	if _, ok := resp.Header("content-length"); ok {
		t.Error("content-length kept in STREAMED")
	}
	if _, ok := resp.Header("x-late"); ok {
		t.Error("streamed header mutation applied")
	}
}

// TestCoalescing: data arriving during the header round trip becomes one
// chunk; a body complete before the header reply becomes one message with
// end_of_stream=true handled as a buffered callback whose header mutation
// applies (ProcessorState::sendBufferedDataInStreamedMode and
// handleCompleteBodyAvailable in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc).
func TestCoalescing(t *testing.T) {
	for _, complete := range []bool{false, true} {
		name := "partial"
		if complete {
			name = "complete"
		}
		t.Run(name, func(t *testing.T) {
			hook, wait := hookWaiter()
			gotHeaders := make(chan struct{})
			proceed := make(chan struct{})
			var bodies []*extprocv3.HttpBody
			firstBody := make(chan struct{})
			c, _ := startProc(t, func(s *pstream) error {
				m := s.recv()
				close(gotHeaders)
				<-proceed
				_ = s.Send(passthrough(m))
				for {
					m := s.recv()
					if m == nil {
						return nil
					}
					if b := m.GetRequestBody(); b != nil {
						if len(bodies) == 0 {
							close(firstBody)
						}
						bodies = append(bodies, b)
						_ = s.Send(reply(m, &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{
							SetHeaders: []*corev3.HeaderValueOption{setRaw("x-from-body", "yes")}}}))
						continue
					}
					_ = s.Send(passthrough(m))
				}
			})
			f := newFilter(t, c, Config{ProcessingMode: mode(SEND, SKIP, STREAMED, NONE)})
			f.hook = hook
			pr, pw := io.Pipe()
			up := &testUpstream{body: []byte("ok")}
			type res struct {
				r   *Response
				err error
			}
			done := make(chan res, 1)
			go func() {
				r, err := f.Do(context.Background(), &Request{Method: "POST", Path: "/", BodyStream: pr}, up)
				done <- res{r, err}
			}()
			<-gotHeaders
			_, _ = pw.Write([]byte("aaa"))
			wait(t, "request data 3")
			_, _ = pw.Write([]byte("bbb"))
			wait(t, "request data 3")
			if complete {
				pw.Close()
				wait(t, "eos=true")
			}
			close(proceed)
			if !complete {
				<-firstBody // the coalesced chunk went out; now stream the rest
				_, _ = pw.Write([]byte("ccc"))
				pw.Close()
			}
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			_, _ = io.ReadAll(r.r.Body)
			<-r.r.Done()
			var got []string
			for _, b := range bodies {
				got = append(got, string(b.GetBody())+map[bool]string{true: "|eos", false: ""}[b.GetEndOfStream()])
			}
			sent := r.r.UpstreamRequest()
			_, mutated := headerOf(sent.Headers, "x-from-body")
			if complete {
				if !slices.Equal(got, []string{"aaabbb|eos"}) || !mutated {
					t.Errorf("bodies=%v header applied=%v", got, mutated)
				}
			} else {
				if !slices.Equal(got, []string{"aaabbb", "ccc", "|eos"}) || mutated {
					t.Errorf("bodies=%v header applied=%v", got, mutated)
				}
			}
			if string(sent.Body) != "aaabbbccc"[:map[bool]int{true: 6, false: 9}[complete]] {
				t.Errorf("upstream body %q", sent.Body)
			}
		})
	}
}

// fixtureDir finds shared/fixtures next to the repository root.
func fixtureDir(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		cand := filepath.Join(dir, "shared", "fixtures")
		if st, err := os.Stat(cand); err == nil && st.IsDir() {
			return cand
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("shared/fixtures not found next to the repository: recorded-traffic tests skipped")
		}
		dir = parent
	}
}

// TestSSERandomChunking: a recorded Anthropic SSE stream goes through
// STREAMED mode split at random byte boundaries, independent of "\n\n"; the
// processor sees exactly the bytes, the client receives them unchanged.
func TestSSERandomChunking(t *testing.T) {
	dir := fixtureDir(t)
	sse, err := os.ReadFile(filepath.Join(dir, "anthropic-recorded", "sse", "fallback-end.sse"))
	if err != nil {
		t.Fatal(err)
	}
	var seen bytes.Buffer
	var chunks []int
	c, p := startProc(t, replyAll(func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if b := m.GetResponseBody(); b != nil {
			seen.Write(b.GetBody())
			chunks = append(chunks, len(b.GetBody()))
		}
		if m.GetResponseHeaders() != nil {
			return &extprocv3.ProcessingResponse{
				Response:     &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}},
				ModeOverride: &extprocfilterv3.ProcessingMode{ResponseBodyMode: STREAMED},
			}
		}
		return passthrough(m)
	}))
	f := newFilter(t, c, Config{ProcessingMode: mode(SEND, SEND, BUFFERED, BUFFERED), AllowModeOverride: true,
		Chunking: Chunking{Random: true, Seed: 7, MaxSize: 48}})
	pr, pw := io.Pipe()
	resp, err := f.Do(t.Context(), &Request{Method: "POST", Path: "/v1/messages", Body: []byte(`{"stream":true}`)},
		&testUpstream{stream: pr, headers: []Header{{"content-type", "text/event-stream"}}})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = pw.Write(sse)
		pw.Close()
	}()
	body, err := io.ReadAll(resp.Body)
	<-resp.Done()
	if err != nil || !bytes.Equal(body, sse) {
		t.Fatalf("client got %d bytes (err %v), want %d", len(body), err, len(sse))
	}
	p.end(t)
	if !bytes.Equal(seen.Bytes(), sse) {
		t.Fatal("processor saw different bytes")
	}
	if len(chunks) < len(sse)/48 {
		t.Fatalf("only %d chunks", len(chunks))
	}
	off, misaligned := 0, 0
	for _, n := range chunks {
		off += n
		if off < len(sse) && !bytes.HasSuffix(sse[:off], []byte("\n\n")) {
			misaligned++
		}
	}
	if misaligned == 0 {
		t.Error("every chunk ended on an SSE boundary")
	}
	if !hasEvent(resp.Trace(), EventModeOverride) {
		t.Error("mode override not recorded")
	}
}

// TestModeOverride covers ProcessingResponse.mode_override
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto)
// as Filter::onReceiveMessage and effectiveModeOverride apply it
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
func TestModeOverride(t *testing.T) {
	cases := []struct {
		name    string
		cfg     Config
		at      string // "request_headers" | "response_headers" | "request_body"
		ov      *extprocfilterv3.ProcessingMode
		want    []string
		ignored bool
		alt     []string // an equally valid sequence, when arrival timing decides
	}{
		{"response buffered to streamed", Config{ProcessingMode: mode(SEND, SEND, BUFFERED, BUFFERED), AllowModeOverride: true},
			"response_headers", &extprocfilterv3.ProcessingMode{ResponseBodyMode: STREAMED},
			// Body complete during the header round trip: one buffered-callback message.
			[]string{"request_headers eos=false", "request_body len=2 eos=true", "response_headers eos=false", "response_body len=4 eos=true"}, false,
			// Body read after the header reply: the data, then EOF as an empty chunk.
			[]string{"request_headers eos=false", "request_body len=2 eos=true", "response_headers eos=false", "response_body len=4 eos=false", "response_body len=0 eos=true"}},
		{"request-time override without response body mode disables it", Config{ProcessingMode: mode(SEND, SEND, BUFFERED, BUFFERED), AllowModeOverride: true},
			"request_headers", &extprocfilterv3.ProcessingMode{RequestBodyMode: BUFFERED},
			[]string{"request_headers eos=false", "request_body len=2 eos=true", "response_headers eos=false"}, false, nil},
		{"header DEFAULT keeps, SKIP applies", Config{ProcessingMode: mode(SEND, SEND, NONE, NONE), AllowModeOverride: true},
			"request_headers", &extprocfilterv3.ProcessingMode{ResponseHeaderMode: SKIP},
			[]string{"request_headers eos=false"}, false, nil},
		{"not allowed", Config{ProcessingMode: mode(SEND, SEND, BUFFERED, BUFFERED)},
			"response_headers", &extprocfilterv3.ProcessingMode{ResponseBodyMode: NONE},
			[]string{"request_headers eos=false", "request_body len=2 eos=true", "response_headers eos=false", "response_body len=4 eos=true"}, true, nil},
		{"ignored in body responses", Config{ProcessingMode: mode(SEND, SEND, BUFFERED, BUFFERED), AllowModeOverride: true},
			"request_body", &extprocfilterv3.ProcessingMode{ResponseBodyMode: NONE},
			[]string{"request_headers eos=false", "request_body len=2 eos=true", "response_headers eos=false", "response_body len=4 eos=true"}, true, nil},
		{"allowed_override_modes mismatch", Config{ProcessingMode: mode(SEND, SEND, BUFFERED, BUFFERED), AllowModeOverride: true,
			AllowedOverrideModes: []*extprocfilterv3.ProcessingMode{{RequestHeaderMode: SEND, ResponseHeaderMode: SEND, ResponseBodyMode: STREAMED}}},
			"response_headers", &extprocfilterv3.ProcessingMode{ResponseBodyMode: NONE},
			[]string{"request_headers eos=false", "request_body len=2 eos=true", "response_headers eos=false", "response_body len=4 eos=true"}, true, nil},
		{"allowed_override_modes match ignoring request header mode", Config{ProcessingMode: mode(SEND, SEND, BUFFERED, BUFFERED), AllowModeOverride: true,
			AllowedOverrideModes: []*extprocfilterv3.ProcessingMode{{RequestHeaderMode: SKIP, ResponseHeaderMode: SEND, ResponseBodyMode: NONE}}},
			"response_headers", &extprocfilterv3.ProcessingMode{ResponseBodyMode: NONE},
			[]string{"request_headers eos=false", "request_body len=2 eos=true", "response_headers eos=false"}, false, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, p := startProc(t, replyAll(func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				r := passthrough(m)
				if requestKind(m)[:len(tc.at)] == tc.at {
					r.ModeOverride = tc.ov
				}
				return r
			}))
			f := newFilter(t, c, tc.cfg)
			resp, body, _ := run(t, f, &Request{Method: "POST", Path: "/", Body: []byte("{}")}, &testUpstream{body: []byte("resp")})
			if resp.Status != 200 || string(body) != "resp" {
				t.Fatalf("status=%d body=%q", resp.Status, body)
			}
			if got := kinds(p.end(t).received); !slices.Equal(got, tc.want) && (tc.alt == nil || !slices.Equal(got, tc.alt)) {
				t.Errorf("messages %v, want %v", got, tc.want)
			}
			if hasEvent(resp.Trace(), EventModeOverride) == tc.ignored {
				t.Errorf("override applied=%v, want %v", !tc.ignored, !tc.ignored)
			}
		})
	}
}

// TestCloseSemantics: what the server observes when the filter closes the
// stream (Filter::closeStreamMaybeGraceful in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc;
// ProcessorStreamImpl::close / halfCloseAndDeleteOnRemoteClose in
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/common/ext_proc/grpc_client_impl.h).
func TestCloseSemantics(t *testing.T) {
	t.Run("default half-close then cancel", func(t *testing.T) {
		c, p := startProc(t, replyAll(passthrough))
		f := newFilter(t, c, Config{})
		run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{})
		if e := p.end(t); !halfClosedThenCancelled(e.recvErr) {
			t.Fatalf("Recv = %v, want EOF", e.recvErr)
		}
	})
	t.Run("graceful waits for the server", func(t *testing.T) {
		c, p := startProc(t, replyAll(passthrough))
		f := newFilter(t, c, Config{Close: CloseGraceful})
		resp, _, _ := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{})
		e := p.end(t)
		if e.recvErr != io.EOF || e.ctxErrAt != nil {
			t.Fatalf("Recv = %v ctx = %v, want EOF and a live context", e.recvErr, e.ctxErrAt)
		}
		tr := resp.Trace()
		if !hasEvent(tr, EventHalfClose) || !hasEvent(tr, EventCancel) {
			t.Errorf("trace %v", tr)
		}
	})
	t.Run("graceful bounded when the server lingers", func(t *testing.T) {
		c, p := startProc(t, func(s *pstream) error {
			m := s.recv()
			_ = s.Send(passthrough(m))
			m = s.recv()
			_ = s.Send(passthrough(m))
			s.recv() // EOF
			<-s.Context().Done()
			return nil
		})
		f := newFilter(t, c, Config{Close: CloseGraceful, RemoteCloseTimeout: 50 * time.Millisecond})
		run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{})
		if e := p.end(t); e.recvErr != io.EOF {
			t.Fatalf("Recv = %v", e.recvErr)
		}
	})
	t.Run("close optimization closes before the HTTP end", func(t *testing.T) {
		for _, off := range []bool{false, true} {
			c, p := startProc(t, replyAll(passthrough))
			f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SEND, NONE, NONE), DisableStreamCloseOptimization: off})
			pr, pw := io.Pipe()
			resp, err := f.Do(t.Context(), &Request{Method: "GET", Path: "/"}, &testUpstream{stream: pr})
			if err != nil {
				t.Fatal(err)
			}
			if !off {
				// Response body NONE: the response_headers reply was the last
				// one needed, so the stream ends while the body still flows.
				if e := p.end(t); !halfClosedThenCancelled(e.recvErr) {
					t.Fatalf("Recv = %v", e.recvErr)
				}
			} else {
				select {
				case <-p.ends:
					t.Fatal("stream closed before the HTTP end with the optimization off")
				default:
				}
			}
			_, _ = pw.Write([]byte("body"))
			pw.Close()
			b, _ := io.ReadAll(resp.Body)
			<-resp.Done()
			if string(b) != "body" {
				t.Fatalf("body %q", b)
			}
			if off {
				p.end(t)
			}
		}
	})
	t.Run("client disconnect mid-stream", func(t *testing.T) {
		sawChunk := make(chan struct{})
		c, p := startProc(t, func(s *pstream) error {
			m := s.recv()
			_ = s.Send(passthrough(m)) // response headers
			s.recv()                   // first chunk: never answered
			close(sawChunk)
			for s.recv() != nil {
			}
			return nil
		})
		f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SEND, NONE, STREAMED), MessageTimeout: time.Minute})
		pr, pw := io.Pipe()
		defer pw.Close()
		ctx, cancel := context.WithCancel(context.Background())
		resp, err := f.Do(ctx, &Request{Method: "GET", Path: "/"}, &testUpstream{stream: pr})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = pw.Write([]byte("partial"))
		<-sawChunk
		cancel()
		_, rerr := io.ReadAll(resp.Body)
		<-resp.Done()
		if !errors.Is(rerr, ErrClientDisconnected) {
			t.Errorf("read error %v", rerr)
		}
		e := p.end(t)
		if !halfClosedThenCancelled(e.recvErr) {
			t.Errorf("Recv = %v", e.recvErr)
		}
		for _, m := range e.received {
			if m.GetResponseBody().GetEndOfStream() {
				t.Error("end_of_stream sent after disconnect")
			}
		}
		if !hasEvent(resp.Trace(), EventClientDisconnect) {
			t.Error("no disconnect event")
		}
	})
	t.Run("body close is a disconnect", func(t *testing.T) {
		c, p := startProc(t, replyAll(passthrough))
		f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SEND, NONE, STREAMED)})
		pr, pw := io.Pipe()
		defer pw.Close()
		resp, err := f.Do(t.Context(), &Request{Method: "GET", Path: "/"}, &testUpstream{stream: pr})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close() // returns after the exchange finished
		if !hasEvent(resp.Trace(), EventClientDisconnect) {
			t.Error("no disconnect event")
		}
		p.end(t)
	})
}

// TestDynamicMetadataAfterEOF: metadata from the last body response is
// visible once the body hit EOF; only receiving namespaces are kept.
func TestDynamicMetadataAfterEOF(t *testing.T) {
	c, _ := startProc(t, replyAll(func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		r := passthrough(m)
		if b := m.GetResponseBody(); b != nil && b.GetEndOfStream() {
			r.DynamicMetadata, _ = structpb.NewStruct(map[string]any{
				"tokenwarden": map[string]any{"output_tokens": 12}, "other": map[string]any{"x": 1}})
		}
		if m.GetRequestHeaders() != nil {
			r.DynamicMetadata, _ = structpb.NewStruct(map[string]any{"tokenwarden": map[string]any{"tenant": "acme", "output_tokens": 0}})
		}
		return r
	}))
	f := newFilter(t, c, Config{ProcessingMode: mode(SEND, SEND, NONE, STREAMED), ReceivingNamespaces: []string{"tokenwarden"}})
	resp, err := f.Do(t.Context(), &Request{Method: "GET", Path: "/"}, &testUpstream{body: []byte("data")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	md := resp.DynamicMetadata().AsMap()
	tw, _ := md["tokenwarden"].(map[string]any)
	if tw["tenant"] != "acme" || tw["output_tokens"] != float64(12) || md["other"] != nil {
		t.Fatalf("metadata after EOF = %v", md)
	}
}

// TestTrailers: trailers are sent only in SEND mode and when present; the
// last body chunk then has end_of_stream=false; mutations apply
// (ProcessingRequest.request_trailers/response_trailers, https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto;
// trailer modes in https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/processing_mode.proto).
func TestTrailers(t *testing.T) {
	c, p := startProc(t, replyAll(func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if m.GetResponseTrailers() != nil {
			return reply(m, &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setRaw("x-usage", "42")}}})
		}
		return passthrough(m)
	}))
	md := mode(SKIP, SKIP, NONE, STREAMED)
	md.ResponseTrailerMode = SEND
	f := newFilter(t, c, Config{ProcessingMode: md})
	resp, body, _ := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{body: []byte("abc"), trailer: []Header{{"Grpc-Status", "0"}}})
	if string(body) != "abc" {
		t.Fatalf("body %q", body)
	}
	got := kinds(p.end(t).received)
	if !slices.Equal(got, []string{"response_body len=3 eos=false", "response_trailers"}) {
		t.Fatalf("messages %v", got)
	}
	tr := resp.Trailers()
	if v, _ := headerOf(tr, "x-usage"); v != "42" {
		t.Errorf("trailers %v", tr)
	}
	if v, _ := headerOf(tr, "grpc-status"); v != "0" {
		t.Errorf("trailers %v", tr)
	}
}

// TestBufferedPartial: up to the limit is sent, the rest flows unprocessed.
func TestBufferedPartial(t *testing.T) {
	c, p := startProc(t, replyAll(func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if m.GetRequestBody() != nil {
			return reply(m, &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte("HEAD")}}})
		}
		return passthrough(m)
	}))
	f := newFilter(t, c, Config{ProcessingMode: mode(SEND, SKIP, PARTIAL, NONE), BufferLimit: 8, Chunking: Chunking{Size: 4}})
	resp, _, _ := run(t, f, &Request{Method: "POST", Path: "/", Body: []byte("0123456789abcdef"), Headers: []Header{{"content-length", "16"}}}, &testUpstream{})
	got := kinds(p.end(t).received)
	if !slices.Equal(got, []string{"request_headers eos=false", "request_body len=8 eos=false"}) {
		t.Fatalf("messages %v", got)
	}
	sent := resp.UpstreamRequest()
	if string(sent.Body) != "HEAD89abcdef" {
		t.Errorf("upstream body %q", sent.Body)
	}
	if _, ok := headerOf(sent.Headers, "content-length"); ok {
		t.Error("content-length kept in BUFFERED_PARTIAL")
	}
}

// TestEmptyLastChunk: EmptyLastAlways ends an in-memory body with an empty
// end_of_stream chunk.
func TestEmptyLastChunk(t *testing.T) {
	c, p := startProc(t, replyAll(passthrough))
	f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SKIP, STREAMED, NONE), Chunking: Chunking{Size: 2, EmptyLast: EmptyLastAlways}})
	resp, _, _ := run(t, f, &Request{Method: "POST", Path: "/", Body: []byte("abcd")}, &testUpstream{})
	got := kinds(p.end(t).received)
	want := []string{"request_body len=2 eos=false", "request_body len=2 eos=false", "request_body len=0 eos=true"}
	// The first two chunks may coalesce only when headers are sent; here
	// headers are skipped, so each data callback is its own message.
	if !slices.Equal(got, want) {
		t.Fatalf("messages %v, want %v", got, want)
	}
	if string(resp.UpstreamRequest().Body) != "abcd" {
		t.Error("upstream body")
	}
}

// TestSpuriousStreamedResponse: streamed_response in STREAMED mode is
// spurious (ProcessorState::handleBodyResponse in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc);
// after the headers went the error reply can only reset,
// and fail-open continues unmodified.
func TestSpuriousStreamedResponse(t *testing.T) {
	for _, fma := range []bool{false, true} {
		c, _ := startProc(t, replyAll(func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
			if m.GetResponseBody() != nil {
				return reply(m, &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{
					Mutation: &extprocv3.BodyMutation_StreamedResponse{StreamedResponse: &extprocv3.StreamedBodyResponse{Body: []byte("x")}}}})
			}
			return passthrough(m)
		}))
		f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SEND, NONE, STREAMED), FailureModeAllow: fma})
		pr, pw := io.Pipe()
		resp, err := f.Do(t.Context(), &Request{Method: "GET", Path: "/"}, &testUpstream{stream: pr})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			_, _ = pw.Write([]byte("abc"))
			_, _ = pw.Write([]byte("def"))
			pw.Close()
		}()
		body, rerr := io.ReadAll(resp.Body)
		<-resp.Done()
		if !hasEvent(resp.Trace(), EventSpurious) {
			t.Errorf("fma=%v: no spurious event", fma)
		}
		if fma && (rerr != nil || string(body) != "abcdef") {
			t.Errorf("fail-open: body %q err %v", body, rerr)
		}
		if !fma && !errors.Is(rerr, ErrStreamReset) {
			t.Errorf("fail-closed: err %v, want reset", rerr)
		}
	}
}

// TestImmediateResponseBufferedResponse: while response headers are still
// held (BUFFERED), an ImmediateResponse becomes the response.
func TestImmediateResponseBufferedResponse(t *testing.T) {
	c, _ := startProc(t, replyAll(func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if m.GetResponseBody() != nil {
			return immediate(502, "bad upstream", "upstream_garbage")
		}
		return passthrough(m)
	}))
	f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SEND, NONE, BUFFERED)})
	resp, body, err := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{body: []byte("garbage")})
	if err != nil || resp.Status != 502 || string(body) != "bad upstream" || !resp.LocalReply {
		t.Fatalf("status %d body %q err %v", resp.Status, body, err)
	}
}

// TestTrailersDefaultSkipped: trailer mode DEFAULT means SKIP; the last body
// chunk still has end_of_stream=false because trailers exist
// (HttpBody.end_of_stream, https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto).
func TestTrailersDefaultSkipped(t *testing.T) {
	c, p := startProc(t, replyAll(passthrough))
	f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SKIP, NONE, STREAMED)})
	resp, body, _ := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{body: []byte("abc"), trailer: []Header{{"x-t", "1"}}})
	if string(body) != "abc" {
		t.Fatalf("body %q", body)
	}
	if got := kinds(p.end(t).received); !slices.Equal(got, []string{"response_body len=3 eos=false"}) {
		t.Fatalf("messages %v", got)
	}
	if v, _ := headerOf(resp.Trailers(), "x-t"); v != "1" {
		t.Errorf("trailers %v", resp.Trailers())
	}
}

// TestClearRouteCacheResponsePath: ignored in the response direction.
func TestClearRouteCacheResponsePath(t *testing.T) {
	c, _ := startProc(t, replyAll(func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		return reply(m, &extprocv3.CommonResponse{ClearRouteCache: true, HeaderMutation: &extprocv3.HeaderMutation{
			SetHeaders: []*corev3.HeaderValueOption{setRaw("x-r", "1")}}})
	}))
	f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SEND, NONE, NONE)})
	resp, _, _ := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{})
	if hasEvent(resp.Trace(), EventClearRouteCache) {
		t.Fatal("route cache cleared on the response path")
	}
	if v, _ := resp.Header("x-r"); v != "1" {
		t.Error("response header mutation not applied")
	}
}

// TestBufferedPartialHeadersSkipped: with headers skipped the partial body
// is sent once; the remainder waits for its reply and then flows unprocessed.
func TestBufferedPartialHeadersSkipped(t *testing.T) {
	c, p := startProc(t, replyAll(passthrough))
	f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SKIP, PARTIAL, NONE), BufferLimit: 8, Chunking: Chunking{Size: 4}})
	resp, _, _ := run(t, f, &Request{Method: "POST", Path: "/", Body: []byte("0123456789abcdefXYZ")}, &testUpstream{})
	if got := kinds(p.end(t).received); !slices.Equal(got, []string{"request_body len=8 eos=false"}) {
		t.Fatalf("messages %v", got)
	}
	if b := resp.UpstreamRequest().Body; string(b) != "0123456789abcdefXYZ" {
		t.Fatalf("upstream body %q", b)
	}
}
