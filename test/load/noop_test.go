package load

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

func headers(eos bool, kv ...string) *extprocv3.HttpHeaders {
	h := &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{}, EndOfStream: eos}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Headers.Headers = append(h.Headers.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return h
}

func TestNoopResponse(t *testing.T) {
	body := &extprocv3.HttpBody{Body: []byte("x")}
	tests := []struct {
		name       string
		req        *extprocv3.ProcessingRequest
		wantKind   string
		wantStream bool
	}{
		{"request headers", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: headers(false)}}, "request_headers", false},
		{"request body", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: body}}, "request_body", false},
		{"request trailers", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{}}}, "request_trailers", false},
		{"json response headers stay buffered", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: headers(false, ":status", "200", "content-type", "application/json")}}, "response_headers", false},
		{"sse response headers switch to streamed", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: headers(false, ":status", "200", "content-type", "Text/Event-Stream; charset=utf-8")}}, "response_headers", true},
		{"sse headers without a body need no override", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: headers(true, "content-type", "text/event-stream")}}, "response_headers", false},
		{"response body", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: body}}, "response_body", false},
		{"response trailers", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}}}, "response_trailers", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NoopResponse(tt.req)
			var kind string
			var common *extprocv3.CommonResponse
			switch x := r.GetResponse().(type) {
			case *extprocv3.ProcessingResponse_RequestHeaders:
				kind, common = "request_headers", x.RequestHeaders.GetResponse()
			case *extprocv3.ProcessingResponse_RequestBody:
				kind, common = "request_body", x.RequestBody.GetResponse()
			case *extprocv3.ProcessingResponse_RequestTrailers:
				kind = "request_trailers"
			case *extprocv3.ProcessingResponse_ResponseHeaders:
				kind, common = "response_headers", x.ResponseHeaders.GetResponse()
			case *extprocv3.ProcessingResponse_ResponseBody:
				kind, common = "response_body", x.ResponseBody.GetResponse()
			case *extprocv3.ProcessingResponse_ResponseTrailers:
				kind = "response_trailers"
			}
			if kind != tt.wantKind {
				t.Fatalf("answered with %q, want %q", kind, tt.wantKind)
			}
			if common.GetStatus() != extprocv3.CommonResponse_CONTINUE || common.GetHeaderMutation() != nil || common.GetBodyMutation() != nil {
				t.Errorf("not an empty CONTINUE: %v", common)
			}
			streamed := r.GetModeOverride().GetResponseBodyMode() == filterv3.ProcessingMode_STREAMED
			if streamed != tt.wantStream {
				t.Errorf("STREAMED override = %v, want %v", streamed, tt.wantStream)
			}
		})
	}
	if NoopResponse(&extprocv3.ProcessingRequest{}) != nil {
		t.Error("a message of no known type got an answer")
	}
}
