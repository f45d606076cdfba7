package sim

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

func immediate(code int, body string, details string, hdrs ...*corev3.HeaderValueOption) *extprocv3.ProcessingResponse {
	ir := &extprocv3.ImmediateResponse{Body: []byte(body), Details: details, Headers: &extprocv3.HeaderMutation{SetHeaders: hdrs}}
	if code != 0 {
		ir.Status = &typev3.HttpStatus{Code: typev3.StatusCode(code)}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: ir}}
}

// TestFailureMatrix checks each failure (gRPC OK close, gRPC error, message
// timeout, spurious response, invalid mutation) with failure_mode_allow off and
// on (failure_mode_allow and status_on_error in https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto;
// Filter::onGrpcError, onGrpcClose, onMessageTimeout and onReceiveMessage in
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
func TestFailureMatrix(t *testing.T) {
	// Each script answers request_headers in some failing way.
	scripts := map[string]func(s *pstream) error{
		"grpc error": func(s *pstream) error {
			s.recv()
			return status.Error(codes.Internal, "boom")
		},
		"spurious wrong oneof": func(s *pstream) error {
			s.recv()
			_ = s.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}})
			return drain(s)
		},
		"no oneof set": func(s *pstream) error {
			s.recv()
			_ = s.Send(&extprocv3.ProcessingResponse{})
			return drain(s)
		},
		"timeout": func(s *pstream) error {
			s.recv()
			return drain(s) // never answers
		},
		"invalid mutation": func(s *pstream) error {
			m := s.recv()
			_ = s.Send(reply(m, &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setRaw("x", "a\nb")}}}))
			return drain(s)
		},
	}
	cases := []struct {
		script, name string
		cfg          Config
		status       int
		details      string
		event        EventKind
	}{
		{"grpc error", "fail closed", Config{}, 500, "ext_proc_error_gRPC_error_13{boom}", EventGRPCError},
		{"grpc error", "fail open", Config{FailureModeAllow: true}, 200, "", EventFailOpen},
		{"spurious wrong oneof", "fail closed", Config{}, 500, "", EventSpurious},
		{"spurious wrong oneof", "fail open", Config{FailureModeAllow: true}, 200, "", EventFailOpen},
		{"spurious wrong oneof", "guard off", Config{DisableFailCloseSpurious: true}, 200, "", EventFailOpen},
		{"no oneof set", "fail closed", Config{}, 500, "unhandled_message:_spurious_message", EventSpurious},
		{"timeout", "fail closed", Config{MessageTimeout: 30 * time.Millisecond}, 504, "ext_proc_error_per-message_timeout_exceeded", EventTimeout},
		{"timeout", "fail open", Config{MessageTimeout: 30 * time.Millisecond, FailureModeAllow: true}, 200, "", EventFailOpen},
		{"invalid mutation", "fail open does not apply", Config{FailureModeAllow: true}, 500, "", EventLocalReply},
	}
	for _, tc := range cases {
		t.Run(tc.script+"/"+tc.name, func(t *testing.T) {
			c, p := startProc(t, scripts[tc.script])
			f := newFilter(t, c, tc.cfg)
			up := &testUpstream{body: []byte("upstream")}
			resp, body, _ := run(t, f, &Request{Method: "POST", Path: "/", Body: []byte("req")}, up)
			if resp.Status != tc.status {
				t.Fatalf("status = %d, want %d; trace %v", resp.Status, tc.status, resp.Trace())
			}
			if tc.details != "" && resp.Details != tc.details {
				t.Errorf("details = %q, want %q", resp.Details, tc.details)
			}
			if !hasEvent(resp.Trace(), tc.event) {
				t.Errorf("no %v in %v", tc.event, resp.Trace())
			}
			_, sent, hits := up.request()
			if tc.status == 200 {
				// Fail-open: the exchange continues unmodified.
				if string(body) != "upstream" || string(sent) != "req" || resp.LocalReply {
					t.Errorf("body=%q upstream got %q", body, sent)
				}
			} else {
				if hits != 0 || !resp.LocalReply || len(body) != 0 {
					t.Errorf("hits=%d local=%v body=%q", hits, resp.LocalReply, body)
				}
				if v, _ := resp.Header("content-length"); v != "0" {
					t.Errorf("content-length = %q", v)
				}
			}
			// No response-phase message after a local reply or fail-open
			// (processing complete).
			end := p.end(t)
			for _, m := range end.received {
				if m.GetResponseHeaders() != nil {
					t.Errorf("response_headers sent after failure")
				}
			}
		})
	}
}

func drain(s *pstream) error {
	for s.recv() != nil {
	}
	return nil
}

// TestStreamOpenFailure: an unreachable processor is a gRPC error.
func TestStreamOpenFailure(t *testing.T) {
	// Nothing listens on port 1: the stream cannot be opened (UNAVAILABLE).
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	failing := extprocv3.NewExternalProcessorClient(conn)
	for _, fma := range []bool{false, true} {
		f := newFilter(t, failing, Config{FailureModeAllow: fma})
		resp, _, _ := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{})
		want := 500
		if fma {
			want = 200
		}
		if resp.Status != want || (!fma && !strings.HasPrefix(resp.Details, "ext_proc_error_gRPC_error_14{")) {
			t.Errorf("fma=%v: status=%d details=%q", fma, resp.Status, resp.Details)
		}
	}
}

// TestImmediateResponse covers ProcessingResponse.immediate_response
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto) in the
// request phase.
func TestImmediateResponse(t *testing.T) {
	c, p := startProc(t, func(s *pstream) error {
		s.recv()
		md, _ := structpb.NewStruct(map[string]any{"tokenwarden": map[string]any{"decision": "denied"}})
		r := immediate(0, "slow down", "rate limited", setRaw("retry-after", "7"), setRaw("x-envoy-nope", "1"))
		r.DynamicMetadata = md
		_ = s.Send(r)
		return drain(s)
	})
	f := newFilter(t, c, Config{ReceivingNamespaces: []string{"tokenwarden"}, ProcessingMode: mode(SEND, SEND, BUFFERED, STREAMED)})
	up := &testUpstream{}
	resp, body, _ := run(t, f, &Request{Method: "POST", Path: "/", Body: []byte("x")}, up)
	if resp.Status != 200 || !resp.LocalReply || string(body) != "slow down" || resp.Details != "rate_limited" {
		t.Fatalf("status=%d local=%v body=%q details=%q", resp.Status, resp.LocalReply, body, resp.Details)
	}
	if v, _ := resp.Header("content-type"); v != "text/plain" {
		t.Errorf("content-type = %q", v)
	}
	if v, _ := resp.Header("retry-after"); v != "7" {
		t.Errorf("retry-after = %q", v)
	}
	if _, ok := resp.Header("x-envoy-nope"); ok {
		t.Error("x-envoy header applied despite the rules")
	}
	if got := resp.DynamicMetadata().AsMap()["tokenwarden"].(map[string]any)["decision"]; got != "denied" {
		t.Errorf("metadata = %v", got)
	}
	if _, _, hits := up.request(); hits != 0 {
		t.Error("upstream called")
	}
	if end := p.end(t); len(end.received) != 1 {
		t.Errorf("messages after immediate response: %v", kinds(end.received))
	}
}

// TestImmediateResponseJSONAndStatus: explicit content-type wins; the status
// is used when >= 200.
func TestImmediateResponseJSONAndStatus(t *testing.T) {
	c, _ := startProc(t, func(s *pstream) error {
		s.recv()
		_ = s.Send(immediate(429, `{"type":"error"}`, "", setRaw("content-type", "application/json")))
		return drain(s)
	})
	f := newFilter(t, c, Config{})
	resp, body, _ := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{})
	ct, _ := resp.Header("content-type")
	if resp.Status != 429 || ct != "application/json" || string(body) != `{"type":"error"}` {
		t.Fatalf("status=%d ct=%q body=%q", resp.Status, ct, body)
	}
}

// TestImmediateResponseAfterHeadersResets: in a STREAMED response after the
// headers went downstream, an ImmediateResponse resets the stream
// (DownstreamFilterManager::sendLocalReply in https://github.com/envoyproxy/envoy/blob/main/source/common/http/filter_manager.cc).
func TestImmediateResponseAfterHeadersResets(t *testing.T) {
	c, _ := startProc(t, func(s *pstream) error {
		for {
			m := s.recv()
			if m == nil {
				return nil
			}
			if b := m.GetResponseBody(); b != nil && bytes.Contains(b.GetBody(), []byte("second")) {
				_ = s.Send(immediate(403, "no", ""))
				continue
			}
			_ = s.Send(passthrough(m))
		}
	})
	f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SEND, NONE, STREAMED)})
	pr, pw := io.Pipe()
	up := &testUpstream{stream: pr}
	resp, err := f.Do(t.Context(), &Request{Method: "GET", Path: "/"}, up)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 200 {
		t.Fatalf("status = %d", resp.Status)
	}
	go func() {
		_, _ = pw.Write([]byte("first"))
		_, _ = pw.Write([]byte("second"))
	}()
	got, rerr := io.ReadAll(resp.Body)
	if !errors.Is(rerr, ErrStreamReset) || string(got) != "first" {
		t.Fatalf("read %q, %v; want first + reset", got, rerr)
	}
	<-resp.Done()
	pw.Close()
	if !hasEvent(resp.Trace(), EventReset) {
		t.Error("no reset event")
	}
}

// TestMessageTimeoutOverride: override_message_timeout restarts the timer
// once per state and is not the response itself
// (ProcessingResponse.override_message_timeout, https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto;
// max_message_timeout in https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto).
func TestMessageTimeoutOverride(t *testing.T) {
	c, _ := startProc(t, func(s *pstream) error {
		m := s.recv()
		ot := &extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(5 * time.Second)}
		_ = s.Send(ot)
		_ = s.Send(ot) // second in the same state: ignored
		time.Sleep(150 * time.Millisecond)
		_ = s.Send(passthrough(m))
		return replyAll(passthrough)(s)
	})
	f := newFilter(t, c, Config{MessageTimeout: 40 * time.Millisecond, MaxMessageTimeout: 10 * time.Second})
	resp, _, _ := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{})
	if resp.Status != 200 {
		t.Fatalf("status = %d (%s)", resp.Status, resp.Details)
	}
	var overrides, ignored int
	for _, e := range resp.Trace() {
		switch {
		case e.Kind == EventTimeoutOverride:
			overrides++
		case e.Kind == EventIgnored && e.Detail == "override_message_timeout":
			ignored++
		}
	}
	if overrides != 1 || ignored != 1 {
		t.Errorf("overrides=%d ignored=%d", overrides, ignored)
	}
}

// TestMessageTimeoutOverrideBeyondMax is ignored, so the original timer fires.
func TestMessageTimeoutOverrideBeyondMax(t *testing.T) {
	c, _ := startProc(t, func(s *pstream) error {
		s.recv()
		_ = s.Send(&extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(time.Hour)})
		return drain(s)
	})
	f := newFilter(t, c, Config{MessageTimeout: 30 * time.Millisecond, MaxMessageTimeout: time.Second})
	resp, _, _ := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{})
	if resp.Status != 504 {
		t.Fatalf("status = %d", resp.Status)
	}
}

// TestBufferLimits: BUFFERED request over the limit is a 413 and the body is
// never sent; BUFFERED response over it is a 500 (requestDataTooLarge /
// responseDataTooLarge in https://github.com/envoyproxy/envoy/blob/main/source/common/http/filter_manager.cc).
func TestBufferLimits(t *testing.T) {
	big := bytes.Repeat([]byte("a"), 100)
	t.Run("request", func(t *testing.T) {
		c, p := startProc(t, replyAll(passthrough))
		f := newFilter(t, c, Config{ProcessingMode: mode(SEND, SKIP, BUFFERED, NONE), BufferLimit: 64, Chunking: Chunking{Size: 16}})
		up := &testUpstream{}
		resp, body, _ := run(t, f, &Request{Method: "POST", Path: "/", Body: big}, up)
		if resp.Status != 413 || resp.Details != "request_payload_too_large" || string(body) != "Payload Too Large" {
			t.Fatalf("status=%d details=%q body=%q", resp.Status, resp.Details, body)
		}
		for _, m := range p.end(t).received {
			if m.GetRequestBody() != nil {
				t.Error("request body sent")
			}
		}
		if _, _, hits := up.request(); hits != 0 {
			t.Error("upstream called")
		}
	})
	t.Run("request at the limit", func(t *testing.T) {
		c, _ := startProc(t, replyAll(passthrough))
		f := newFilter(t, c, Config{ProcessingMode: mode(SEND, SKIP, BUFFERED, NONE), BufferLimit: 100})
		resp, _, _ := run(t, f, &Request{Method: "POST", Path: "/", Body: big}, &testUpstream{})
		if resp.Status != 200 {
			t.Fatalf("status = %d", resp.Status)
		}
	})
	t.Run("response", func(t *testing.T) {
		c, _ := startProc(t, replyAll(passthrough))
		f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SEND, NONE, BUFFERED), BufferLimit: 64})
		resp, body, _ := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{body: big})
		if resp.Status != 500 || resp.Details != "response_payload_too_large" || string(body) != "Internal Server Error" {
			t.Fatalf("status=%d details=%q", resp.Status, resp.Details)
		}
	})
}

// TestUpstreamFailure: a router local reply never reaches the processor.
func TestUpstreamFailure(t *testing.T) {
	c, p := startProc(t, replyAll(passthrough))
	f := newFilter(t, c, Config{ProcessingMode: mode(SEND, SEND, NONE, NONE)})
	resp, _, _ := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{err: errBoom})
	if resp.Status != 503 || !resp.LocalReply {
		t.Fatalf("status = %d", resp.Status)
	}
	for _, m := range p.end(t).received {
		if m.GetResponseHeaders() != nil {
			t.Error("local reply sent to the processor")
		}
	}
}

// TestStreamOpenTimeout: a processor address that never connects is bounded
// by StreamOpenTimeout and answered like a message timeout (504).
func TestStreamOpenTimeout(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	// Accepts TCP but never speaks HTTP/2: the gRPC connection stays CONNECTING.
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	f := newFilter(t, extprocv3.NewExternalProcessorClient(conn), Config{StreamOpenTimeout: 50 * time.Millisecond})
	resp, _, _ := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{})
	if resp.Status != 504 || resp.Details != "ext_proc_error_per-message_timeout_exceeded" {
		t.Fatalf("status %d details %q", resp.Status, resp.Details)
	}
}
