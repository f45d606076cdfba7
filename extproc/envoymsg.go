package extproc

import (
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// MetadataNamespace is the dynamic-metadata namespace tokenwarden writes; it
// must be listed in the filter's metadata_options.receiving_namespaces.
const MetadataNamespace = "tokenwarden"

// PolicyAttribute is the request attribute, listed in the ext_proc filter's
// request_attributes, whose value names the route's policy. A path
// expression arrives as a plain string; bare xds.route_metadata would arrive
// as protobuf text (reference/envoy-ext-proc.md §5.3).
const PolicyAttribute = "xds.route_metadata.filter_metadata['tokenwarden']['policy']"

const attributesKey = "envoy.filters.http.ext_proc"

// modelHeader carries the resolved model on the request to the upstream, set
// with clear_route_cache so envoy.yaml can route by model.
const modelHeader = "x-tokenwarden-model"

// headerEdits accumulates a header mutation. Envoy reads only raw_value (the
// send_header_raw_value default) and ignores append_action, so values go in
// raw_value with append left unset, which means overwrite; append_action is
// set too for the day Envoy honours it (reference §3.2).
type headerEdits struct {
	set    []*corev3.HeaderValueOption
	remove []string
}

func (h *headerEdits) Set(key, value string) {
	h.set = append(h.set, &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: key, RawValue: []byte(value)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	})
}

func (h *headerEdits) Remove(key string) { h.remove = append(h.remove, key) }

func (h *headerEdits) empty() bool { return len(h.set) == 0 && len(h.remove) == 0 }

func (h *headerEdits) mutation() *extprocv3.HeaderMutation {
	if h.empty() {
		return nil
	}
	return &extprocv3.HeaderMutation{SetHeaders: h.set, RemoveHeaders: h.remove}
}

// common builds a CommonResponse; nil when there is nothing to say, which
// Envoy reads as "continue unchanged".
func common(h *headerEdits, body []byte, bodyChanged, clearRouteCache bool) *extprocv3.CommonResponse {
	if (h == nil || h.empty()) && !bodyChanged {
		return nil
	}
	c := &extprocv3.CommonResponse{}
	if h != nil {
		c.HeaderMutation = h.mutation()
		// clear_route_cache only acts together with a header mutation.
		c.ClearRouteCache = clearRouteCache && c.HeaderMutation != nil
	}
	if bodyChanged {
		c.BodyMutation = &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: body}}
	}
	return c
}

func requestHeadersResponse(c *extprocv3.CommonResponse, mode *filterv3.ProcessingMode) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{
		Response:     &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: c}},
		ModeOverride: mode,
	}
}

func requestBodyResponse(c *extprocv3.CommonResponse) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: c}},
	}
}

func responseHeadersResponse(c *extprocv3.CommonResponse, mode *filterv3.ProcessingMode) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{
		Response:     &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{Response: c}},
		ModeOverride: mode,
	}
}

func responseBodyResponse(c *extprocv3.CommonResponse) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{Response: c}},
	}
}

func requestTrailersResponse() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
}

func responseTrailersResponse() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
}

// immediate is a local reply. content-type is set explicitly because Envoy
// defaults local replies to text/plain, and content-length because the body
// is known.
func immediate(code int, h *headerEdits, body []byte, details string) *extprocv3.ProcessingResponse {
	if h == nil {
		h = &headerEdits{}
	}
	h.Set("content-type", "application/json")
	h.Set("content-length", strconv.Itoa(len(body)))
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(code)},
			Headers: h.mutation(),
			Body:    body,
			Details: details,
		}},
	}
}

// passThroughMode switches off everything after request headers: no body in
// either direction and no response headers, so Envoy closes the stream.
var passThroughMode = &filterv3.ProcessingMode{
	RequestBodyMode:    filterv3.ProcessingMode_NONE,
	ResponseHeaderMode: filterv3.ProcessingMode_SKIP,
	ResponseBodyMode:   filterv3.ProcessingMode_NONE,
}

// streamedResponseMode switches an SSE response body to STREAMED. Envoy takes
// both body modes from an override; the request body is over by now, so NONE
// is harmless there (reference §2.4).
var streamedResponseMode = &filterv3.ProcessingMode{
	RequestBodyMode:  filterv3.ProcessingMode_NONE,
	ResponseBodyMode: filterv3.ProcessingMode_STREAMED,
}

// noResponseBodyMode stops response body messages (error responses carry no
// usage worth reading).
var noResponseBodyMode = &filterv3.ProcessingMode{
	RequestBodyMode:  filterv3.ProcessingMode_NONE,
	ResponseBodyMode: filterv3.ProcessingMode_NONE,
}

// withMetadata attaches fields under the tokenwarden namespace.
func withMetadata(r *extprocv3.ProcessingResponse, fields map[string]*structpb.Value) *extprocv3.ProcessingResponse {
	if len(fields) == 0 {
		return r
	}
	r.DynamicMetadata = &structpb.Struct{Fields: map[string]*structpb.Value{
		MetadataNamespace: structpb.NewStructValue(&structpb.Struct{Fields: fields}),
	}}
	return r
}

// headerValue reads a header from an Envoy header map. Envoy sends raw_value
// with value empty (send_header_raw_value, on by default); value is read as
// a fallback for processors driven by older configurations.
func headerValue(h *corev3.HeaderValue) string {
	if len(h.RawValue) > 0 {
		return string(h.RawValue)
	}
	return h.Value
}
