package sim

import (
	"slices"
	"testing"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// TestDefaultModeMessages covers ProcessingRequest's contents
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto) under the
// default ProcessingMode (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/processing_mode.proto): with the default mode only the
// two header messages are sent, with lower-cased raw_value headers, the
// pseudo-headers, the HCM-added headers, protocol_config on the first message
// only and metadata_context on every message.
func TestDefaultModeMessages(t *testing.T) {
	c, p := startProc(t, replyAll(passthrough))
	f := newFilter(t, c, Config{ClusterName: "llm_extproc", InitialMetadata: map[string]string{"x-llm-route": "messages"}})
	up := &testUpstream{headers: []Header{{"Content-Type", "application/json"}}, body: []byte(`{"ok":true}`)}
	resp, body, err := run(t, f, &Request{Method: "POST", Path: "/v1/messages?beta=true", Authority: "api.example.com",
		Headers: []Header{{"X-Tenant-ID", "acme"}, {"Accept", "a"}, {"Accept", "b"}}, Body: []byte(`{"model":"m"}`)}, up)
	if err != nil || string(body) != `{"ok":true}` || resp.Status != 200 || resp.LocalReply {
		t.Fatalf("resp=%+v body=%q err=%v", resp, body, err)
	}
	end := p.end(t)
	if got := kinds(end.received); !slices.Equal(got, []string{"request_headers eos=false", "response_headers eos=false"}) {
		t.Fatalf("messages = %v", got)
	}
	rq := end.received[0]
	if rq.GetProtocolConfig() == nil || end.received[1].GetProtocolConfig() != nil {
		t.Error("protocol_config must be on the first message only")
	}
	for i, m := range end.received {
		if m.GetMetadataContext() == nil {
			t.Errorf("message %d has no metadata_context", i)
		}
	}
	hm := rq.GetRequestHeaders().GetHeaders()
	for _, want := range []struct{ k, v string }{
		{":method", "POST"}, {":path", "/v1/messages?beta=true"}, {":scheme", "http"}, {":authority", "api.example.com"},
		{"x-tenant-id", "acme"}, {"x-forwarded-proto", "http"},
	} {
		h, ok := protoHeader(hm, want.k)
		if !ok || string(h.GetRawValue()) != want.v || h.GetValue() != "" {
			t.Errorf("header %s = %v (want raw_value %q, empty value)", want.k, h, want.v)
		}
	}
	if h, ok := protoHeader(hm, "x-request-id"); !ok || len(h.GetRawValue()) != 36 {
		t.Errorf("x-request-id = %v", h)
	}
	n := 0
	for _, h := range hm.GetHeaders() {
		if h.GetKey() == "accept" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("duplicate headers must be separate entries, got %d accept", n)
	}
	st, ok := protoHeader(end.received[1].GetResponseHeaders().GetHeaders(), ":status")
	if !ok || string(st.GetRawValue()) != "200" {
		t.Errorf(":status = %v", st)
	}
	md := p.md[0]
	if got := md.Get(":authority"); len(got) != 1 || got[0] != "llm_extproc" {
		t.Errorf(":authority = %v", got)
	}
	if got := md.Get("x-llm-route"); len(got) != 1 || got[0] != "messages" {
		t.Errorf("initial metadata = %v", got)
	}
	// Close optimization: response headers reply is the last needed one,
	// closed with half-close then cancel: the server sees EOF.
	if !halfClosedThenCancelled(end.recvErr) {
		t.Errorf("server Recv ended with %v, want EOF", end.recvErr)
	}
	_, sent, _ := up.request()
	if string(sent) != `{"model":"m"}` {
		t.Errorf("upstream body = %q", sent)
	}
}

// TestLazyStreamOpen: no stream is opened when every phase is SKIP/NONE
// (Filter::openStream opens the stream lazily, https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
func TestLazyStreamOpen(t *testing.T) {
	c, p := startProc(t, replyAll(passthrough))
	f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SKIP, NONE, NONE)})
	up := &testUpstream{body: []byte("hello")}
	resp, body, _ := run(t, f, &Request{Method: "POST", Path: "/", Body: []byte("x")}, up)
	if string(body) != "hello" || resp.Status != 200 {
		t.Fatalf("body=%q status=%d", body, resp.Status)
	}
	if n := p.streamCount(); n != 0 {
		t.Fatalf("%d streams opened, want 0", n)
	}
	if hasEvent(resp.Trace(), EventStreamOpen) {
		t.Fatal("trace shows a stream open")
	}
}

// TestModeMatrix checks which messages each mode combination produces and
// where content-length survives (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/processing_mode.proto;
// ProcessorState::shouldRemoveContentLength in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.h).
func TestModeMatrix(t *testing.T) {
	body := []byte(`{"model":"claude"}`)
	cases := []struct {
		name     string
		cfg      Config
		get      bool
		want     []string
		upCL     bool // content-length reaches the upstream
		respBody bool // upstream returns a body
	}{
		{"headers only", Config{}, false, []string{"request_headers eos=false", "response_headers eos=false"}, true, true},
		{"GET no body", Config{}, true, []string{"request_headers eos=true", "response_headers eos=false"}, false, true},
		{"request buffered", Config{ProcessingMode: mode(SEND, SKIP, BUFFERED, NONE)}, false,
			[]string{"request_headers eos=false", "request_body len=18 eos=true"}, true, true},
		{"request buffered headers skip", Config{ProcessingMode: mode(SKIP, SKIP, BUFFERED, NONE)}, false,
			[]string{"request_body len=18 eos=true"}, false, true},
		{"request streamed headers skip", Config{ProcessingMode: mode(SKIP, SKIP, STREAMED, NONE), Chunking: Chunking{Size: 18}}, false,
			[]string{"request_body len=18 eos=true"}, false, true},
		{"response buffered", Config{ProcessingMode: mode(SKIP, SEND, NONE, BUFFERED)}, false,
			[]string{"response_headers eos=false", "response_body len=5 eos=true"}, true, true},
		{"response streamed headers skip", Config{ProcessingMode: mode(SKIP, SKIP, NONE, STREAMED), Chunking: Chunking{Size: 2}}, false,
			[]string{"response_body len=2 eos=false", "response_body len=2 eos=false", "response_body len=1 eos=false", "response_body len=0 eos=true"}, true, true},
		{"response no body", Config{ProcessingMode: mode(SKIP, SEND, NONE, BUFFERED)}, false,
			[]string{"response_headers eos=true"}, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, p := startProc(t, replyAll(passthrough))
			f := newFilter(t, c, tc.cfg)
			up := &testUpstream{}
			if tc.respBody {
				up.body = []byte("hello")
			}
			req := &Request{Method: "POST", Path: "/v1/messages", Headers: []Header{{"content-length", "18"}}, Body: body}
			if tc.get {
				req = &Request{Method: "GET", Path: "/v1/models"}
			}
			resp, got, err := run(t, f, req, up)
			if err != nil || resp.Status != 200 {
				t.Fatalf("status=%d err=%v trace=%v", resp.Status, err, resp.Trace())
			}
			if tc.respBody && string(got) != "hello" {
				t.Errorf("body = %q", got)
			}
			end := p.end(t)
			if k := kinds(end.received); !slices.Equal(k, tc.want) {
				t.Errorf("messages = %v, want %v", k, tc.want)
			}
			if !tc.get {
				r, sent, _ := up.request()
				_, hasCL := headerOf(r.Headers, "content-length")
				if hasCL != tc.upCL {
					t.Errorf("content-length upstream = %v, want %v", hasCL, tc.upCL)
				}
				if string(sent) != string(body) {
					t.Errorf("upstream body = %q", sent)
				}
			}
		})
	}
}

// TestAttributes: request attributes only on the first request-direction
// message, response attributes on the first response message, under the one
// key, typed as Envoy's ExpressionManager::evaluateAttributes does
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/matching_utils.cc).
func TestAttributes(t *testing.T) {
	c, p := startProc(t, replyAll(passthrough))
	policy := "xds.route_metadata.filter_metadata['tokenwarden']['policy']"
	f := newFilter(t, c, Config{
		ProcessingMode:     mode(SEND, SEND, BUFFERED, NONE),
		RequestAttributes:  []string{policy, "request.path", "request.method", "xds.route_name", "custom.flag", "custom.n"},
		ResponseAttributes: []string{"response.code"},
	})
	_, _, _ = run(t, f, &Request{Method: "POST", Path: "/v1/messages?x=1", Body: []byte("{}"),
		Attributes: map[string]any{policy: "batch", "custom.flag": true, "custom.n": 7}}, &testUpstream{status: 201, body: []byte("ok")})
	end := p.end(t)
	if len(end.received) != 3 {
		t.Fatalf("messages = %v", kinds(end.received))
	}
	a := end.received[0].GetAttributes()
	if len(a) != 1 || a[attributesKey] == nil {
		t.Fatalf("attributes keys = %v", a)
	}
	fs := a[attributesKey].GetFields()
	if fs[policy].GetStringValue() != "batch" || fs["request.path"].GetStringValue() != "/v1/messages?x=1" ||
		fs["request.method"].GetStringValue() != "POST" || !fs["custom.flag"].GetBoolValue() || fs["custom.n"].GetNumberValue() != 7 {
		t.Errorf("attributes = %v", fs)
	}
	if _, ok := fs["xds.route_name"]; ok {
		t.Error("an expression without a value must be omitted")
	}
	if end.received[1].GetAttributes() != nil {
		t.Error("attributes repeated on the request body message")
	}
	ra := end.received[2].GetAttributes()[attributesKey].GetFields()
	if ra["response.code"].GetNumberValue() != 201 {
		t.Errorf("response attributes = %v", ra)
	}
}

// TestForwardingNamespaces: every message carries metadata_context, with
// the request's dynamic metadata of the forwarding namespaces only
// (metadata_options.forwarding_namespaces,
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto).
func TestForwardingNamespaces(t *testing.T) {
	c, p := startProc(t, replyAll(passthrough))
	jwt := "envoy.filters.http.jwt_authn"
	f := newFilter(t, c, Config{ProcessingMode: mode(SEND, SEND, BUFFERED, NONE), ForwardingNamespaces: []string{jwt, "absent"}})
	_, _, _ = run(t, f, &Request{Method: "POST", Path: "/", Body: []byte("{}"), Metadata: map[string]map[string]any{
		jwt:                            {"payload": map[string]any{"sub": "alice", "org_id": "acme"}},
		"envoy.filters.http.ext_authz": {"tenant": "mallory"},
	}}, &testUpstream{})
	end := p.end(t)
	if len(end.received) != 3 {
		t.Fatalf("messages = %v", kinds(end.received))
	}
	for i, m := range end.received {
		fm := m.GetMetadataContext().GetFilterMetadata()
		if len(fm) != 1 || fm[jwt].GetFields()["payload"].GetStructValue().GetFields()["sub"].GetStringValue() != "alice" {
			t.Errorf("message %d metadata_context = %v, want only the forwarded jwt_authn payload", i, fm)
		}
	}
}

// TestSkipHeadersAttributesOnBody: with request headers SKIP the first
// message is request_body and carries protocol_config and attributes
// (ProcessingRequest.protocol_config and attributes, https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto).
func TestSkipHeadersAttributesOnBody(t *testing.T) {
	c, p := startProc(t, replyAll(passthrough))
	f := newFilter(t, c, Config{ProcessingMode: mode(SKIP, SKIP, BUFFERED, NONE), RequestAttributes: []string{"request.method"}})
	_, _, _ = run(t, f, &Request{Method: "POST", Path: "/", Body: []byte("abc")}, &testUpstream{})
	end := p.end(t)
	m := end.received[0]
	if m.GetRequestBody() == nil || m.GetProtocolConfig().GetRequestBodyMode() != BUFFERED || m.GetAttributes() == nil {
		t.Fatalf("first message = %v", m)
	}
}

// TestProcessorOKMidExchange: the processor returning nil from Process
// continues the exchange unmodified and without further messages, whatever
// failure_mode_allow says (Filter::onGrpcClose in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
func TestProcessorOKMidExchange(t *testing.T) {
	for _, fma := range []bool{false, true} {
		c, p := startProc(t, func(s *pstream) error {
			s.recv()
			return nil
		})
		f := newFilter(t, c, Config{FailureModeAllow: fma, ProcessingMode: mode(SEND, SEND, BUFFERED, BUFFERED)})
		up := &testUpstream{body: []byte("resp")}
		resp, body, err := run(t, f, &Request{Method: "POST", Path: "/", Body: []byte("req")}, up)
		if err != nil || resp.Status != 200 || string(body) != "resp" || resp.LocalReply {
			t.Fatalf("fma=%v: status=%d body=%q err=%v", fma, resp.Status, body, err)
		}
		if _, sent, _ := up.request(); string(sent) != "req" {
			t.Errorf("upstream body = %q", sent)
		}
		if end := p.end(t); len(end.received) != 1 {
			t.Errorf("processor got %v after returning", kinds(end.received))
		}
		if !hasEvent(resp.Trace(), EventGRPCClose) {
			t.Error("no grpc_close event")
		}
	}
}

// TestTraceRecordsMessages: the trace holds the exact messages in order.
func TestTraceRecordsMessages(t *testing.T) {
	c, _ := startProc(t, replyAll(passthrough))
	f := newFilter(t, c, Config{})
	resp, _, _ := run(t, f, &Request{Method: "GET", Path: "/"}, &testUpstream{})
	var sends []string
	for _, e := range resp.Trace() {
		if e.Kind == EventSend {
			sends = append(sends, requestKind(e.Request))
		}
	}
	if !slices.Equal(sends, []string{"request_headers eos=true", "response_headers eos=true"}) {
		t.Fatalf("sends = %v", sends)
	}
	_ = extprocv3.ProcessingRequest{}
}

// TestConfigDefaults: zero values become Envoy's defaults; unsupported modes
// are rejected.
func TestConfigDefaults(t *testing.T) {
	c, err := Config{}.normalized()
	if err != nil {
		t.Fatal(err)
	}
	if c.MessageTimeout != 200*time.Millisecond || c.StatusOnError != 500 || c.BufferLimit != 1<<20 ||
		c.RemoteCloseTimeout != time.Second || c.MaxHeaders != 100 || c.ProcessingMode == nil {
		t.Errorf("defaults %+v", c)
	}
	m := modeFor(c.ProcessingMode, true)
	if !m.sendHeaders || m.bodyMode != NONE || m.sendTrailers {
		t.Errorf("default request mode %+v", m)
	}
	for _, bad := range []Config{
		{ProcessingMode: &extprocfilterv3.ProcessingMode{RequestBodyMode: extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED}},
		{MessageTimeout: 2 * time.Hour},
		{StatusOnError: 99},
	} {
		if _, err := bad.normalized(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}
