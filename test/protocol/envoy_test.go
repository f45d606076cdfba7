package protocol

import (
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
)

// Messages as Envoy builds them
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto):
// header keys in lower case with the value in raw_value (Envoy's
// send_header_raw_value default), protocol_config on the first message of a
// stream only, end_of_stream on the last body chunk only when no trailers
// follow.

func hv(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, RawValue: []byte(v)} }

// identity is how a request names its tenant: x-tenant-id (a trusted header
// in this config), or only an API key, whose fingerprint is the tenant.
type identity struct{ tenantID, apiKey string }

// requestHeaders is the first message of a POST /v1/messages stream, with
// the filter's body modes in protocol_config (BUFFERED request, BUFFERED
// response: envoy/envoy.yaml's).
func requestHeaders(id identity, mode filterv3.ProcessingMode_BodySendMode, body string) *extprocv3.ProcessingRequest {
	hs := []*corev3.HeaderValue{
		hv(":method", "POST"), hv(":path", "/v1/messages"), hv(":scheme", "https"), hv(":authority", "api.anthropic.com"),
		hv("content-type", "application/json"), hv("content-length", strconv.Itoa(len(body))),
		hv("anthropic-version", "2023-06-01"), hv("x-forwarded-proto", "https"),
		hv("x-request-id", "0b6d7c55-8d4e-4b7a-9b2e-2f1f3f6c9a10"),
		hv("x-api-key", cmpOr(id.apiKey, "sk-ant-api03-protocol-test")),
	}
	if id.tenantID != "" {
		hs = append(hs, hv("x-tenant-id", id.tenantID))
	}
	return &extprocv3.ProcessingRequest{
		Request:         &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: hs}}},
		MetadataContext: &corev3.Metadata{},
		ProtocolConfig:  &extprocv3.ProtocolConfiguration{RequestBodyMode: mode, ResponseBodyMode: filterv3.ProcessingMode_BUFFERED},
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func requestBody(b string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte(b), EndOfStream: eos}}}
}

// firstBody is a request_body that opens the stream, as with
// request_header_mode SKIP: it carries protocol_config.
func firstBody(b string) *extprocv3.ProcessingRequest {
	m := requestBody(b, true)
	m.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: filterv3.ProcessingMode_BUFFERED, ResponseBodyMode: filterv3.ProcessingMode_BUFFERED}
	return m
}

func requestTrailers() *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{
		Trailers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{hv("x-body-checksum", "sha256=9f86d0")}},
	}}}
}

func responseHeaders(code int, contentType string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			hv(":status", strconv.Itoa(code)), hv("content-type", contentType),
			hv("request-id", "req_011CProtocolTest"), hv("anthropic-ratelimit-requests-limit", "4000"),
		}},
	}}}
}

func responseBody(b string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte(b), EndOfStream: eos}}}
}

func responseTrailers() *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{
		Trailers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{hv("x-upstream-done", "1")}},
	}}}
}

// kindOf names the oneof a ProcessingRequest or ProcessingResponse carries.
func kindOf(m proto.Message) string {
	msg := m.ProtoReflect()
	oneofs := msg.Descriptor().Oneofs()
	od := oneofs.ByName("request")
	if od == nil {
		od = oneofs.ByName("response")
	}
	if fd := msg.WhichOneof(od); fd != nil {
		return string(fd.Name())
	}
	return "none"
}

// Anthropic wire bodies (https://docs.anthropic.com/en/api/messages and
// https://docs.anthropic.com/en/docs/build-with-claude/streaming), in the
// shapes test/mockprovider emits.
const (
	messagesBody = `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Name three prime numbers."}]}`
	streamBody   = `{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Name three prime numbers."}]}`

	jsonResponse = `{"model":"claude-sonnet-4-5","id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant",` +
		`"content":[{"type":"text","text":"2, 3 and 5."}],"stop_reason":"end_turn","stop_sequence":null,` +
		`"usage":{"input_tokens":14,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,` +
		`"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":9,"service_tier":"standard"}}`
)

var sseEvents = []string{
	"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":2000,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"cache_creation\":{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n",
	"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
	"event: ping\ndata: {\"type\": \"ping\"}\n\n",
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"2, 3\"}}\n\n",
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" and 5.\"}}\n\n",
	"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
	"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":2000,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":11}}\n\n",
	"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
}

// sseChunks cuts the whole event stream at the given offsets: Envoy's
// STREAMED chunks fall anywhere in an event.
func sseChunks(cuts ...int) []string {
	all := strings.Join(sseEvents, "")
	var out []string
	prev := 0
	for _, c := range cuts {
		out = append(out, all[prev:c])
		prev = c
	}
	return append(out, all[prev:])
}

// claude-sonnet-4-5 in nano-USD per token ($3 input, $15 output per million,
// https://docs.anthropic.com/en/docs/about-claude/pricing), written out so
// a pricing bug cannot cancel itself out.
const inNano, outNano = 3000, 15000

const (
	jsonCost = 14*inNano + 9*outNano
	sseCost  = 2000*inNano + 11*outNano
)
