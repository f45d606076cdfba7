package extproc

import (
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
	"github.com/tokenwarden/tokenwarden/extproc/observe"
)

// This file is the only place gate values become ext_proc messages
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto):
// one function per kind of answer.
//
// The answers an exchange always sends (request headers and body, response
// headers and body) are each built in one block, an anonymous struct of
// all their messages, instead of one allocation a message: nothing writes
// to an answer once it is built, so sharing the block is as safe as
// separate messages.

// requestHeadersAnswer answers request_headers. clear_route_cache goes with
// every header mutation, so a route matching on a header tokenwarden changed
// is picked again.
func requestHeadersAnswer(e gate.HeaderEdits, mode *filterv3.ProcessingMode) *extprocv3.ProcessingResponse {
	k := new(struct {
		r extprocv3.ProcessingResponse
		w extprocv3.ProcessingResponse_RequestHeaders
		h extprocv3.HeadersResponse
		c commonBlock
	})
	k.h.Response = k.c.common(e, nil, false, true)
	k.w.RequestHeaders = &k.h
	k.r.Response, k.r.ModeOverride = &k.w, mode
	return &k.r
}

// bodyAnswer answers request_body: the (possibly rewritten) body and its
// header changes; an empty answer lets the body through unchanged.
func bodyAnswer(v gate.BodyVerdict) *extprocv3.ProcessingResponse {
	k := new(struct {
		r extprocv3.ProcessingResponse
		w extprocv3.ProcessingResponse_RequestBody
		b extprocv3.BodyResponse
		c commonBlock
	})
	k.b.Response = k.c.common(v.Edits, v.Body, v.BodyChanged, true)
	k.w.RequestBody = &k.b
	k.r.Response = &k.w
	return &k.r
}

// clearChunkAnswer holds a STREAMED request chunk back: the whole body goes
// with the last chunk's answer.
func clearChunkAnswer() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{
			BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_ClearBody{ClearBody: true}},
		}}},
	}
}

// timeoutAnswer asks Envoy to wait up to d for the answer to the message
// it awaits (override_message_timeout: only that field counts, once per
// message, at most max_message_timeout).
func timeoutAnswer(d time.Duration) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(d)}
}

func requestTrailersAnswer() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
}

// responseHeadersAnswer answers response_headers with the header changes,
// the body mode the response needs, and the access-log metadata when the
// request is already metered (o not nil).
func responseHeadersAnswer(v gate.ResponseVerdict, o *gate.Outcome) *extprocv3.ProcessingResponse {
	var mode *filterv3.ProcessingMode
	switch {
	case v.SkipBody:
		mode = noResponseBodyMode
	case v.Stream:
		mode = streamedResponseMode
	}
	k := new(struct {
		r extprocv3.ProcessingResponse
		w extprocv3.ProcessingResponse_ResponseHeaders
		h extprocv3.HeadersResponse
		c commonBlock
	})
	k.h.Response = k.c.common(v.Edits, nil, false, false)
	k.w.ResponseHeaders = &k.h
	k.r.Response, k.r.ModeOverride = &k.w, mode
	return withMetadata(&k.r, o)
}

// unchangedChunk is the answer to a response_body message that goes on
// unchanged and ends nothing — all but the last message of almost every SSE
// stream (about forty a stream in the load harness), which otherwise cost
// three allocations each. One value serves every stream: nothing writes to
// an answer once it is built (the codec sets dynamic_metadata aside and
// back only on answers that have it, and this one never does), and
// protobuf-go marshals one message from several goroutines safely (its
// size cache is atomic).
var unchangedChunk = &extprocv3.ProcessingResponse{
	Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}},
}

// chunkAnswer answers a response_body message, with the access-log
// metadata on the last one: the chunk goes on unchanged, or, when the gate
// rewrites the stream, is replaced by v.Body — in STREAMED mode `body`
// replaces the chunk and `clear_body` drops it (BodyMutation,
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto).
func chunkAnswer(v gate.ChunkVerdict, o *gate.Outcome) *extprocv3.ProcessingResponse {
	if !v.Replace && o == nil {
		return unchangedChunk
	}
	k := new(struct {
		r extprocv3.ProcessingResponse
		w extprocv3.ProcessingResponse_ResponseBody
		b extprocv3.BodyResponse
	})
	if v.Replace {
		m := &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_ClearBody{ClearBody: true}}
		if len(v.Body) > 0 {
			m.Mutation = &extprocv3.BodyMutation_Body{Body: v.Body}
		}
		k.b.Response = &extprocv3.CommonResponse{BodyMutation: m}
	}
	k.w.ResponseBody = &k.b
	k.r.Response = &k.w
	return withMetadata(&k.r, o)
}

func responseTrailersAnswer(o *gate.Outcome) *extprocv3.ProcessingResponse {
	return withMetadata(&extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}},
	}, o)
}

// replyAnswer is a local reply. Envoy defaults local replies to text/plain,
// so the gate's reply always names its content-type.
func replyAnswer(r *gate.Reply, o *gate.Outcome) *extprocv3.ProcessingResponse {
	return withMetadata(&extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(r.Status)},
			Headers: headerMutation(gate.HeaderEdits{Set: r.Headers}),
			Body:    r.Body,
			Details: r.Details,
		}},
	}, o)
}

// common builds a CommonResponse; nil when there is nothing to say, which
// Envoy reads as "continue unchanged". clear_route_cache only acts together
// with a header mutation, and only on the request path.
//
// Its messages come from k, which is part of the answer's block.
func (k *commonBlock) common(e gate.HeaderEdits, body []byte, bodyChanged, clearRouteCache bool) *extprocv3.CommonResponse {
	if e.Empty() && !bodyChanged {
		return nil
	}
	c := &k.c
	if fillHeaderMutation(&k.hm, e) {
		c.HeaderMutation = &k.hm
	}
	c.ClearRouteCache = clearRouteCache && c.HeaderMutation != nil
	if bodyChanged {
		k.body.Body = body
		k.bm.Mutation = &k.body
		c.BodyMutation = &k.bm
	}
	return c
}

// commonBlock holds the messages of one CommonResponse.
type commonBlock struct {
	c    extprocv3.CommonResponse
	hm   extprocv3.HeaderMutation
	bm   extprocv3.BodyMutation
	body extprocv3.BodyMutation_Body
}

// headerMutation encodes header edits. Envoy reads only raw_value (its
// send_header_raw_value default) and ignores append_action in ext_proc, so
// values go in raw_value with append left unset, which means overwrite;
// append_action is set too, for the day Envoy honours it
// (HeaderValueOption: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/base.proto).
func headerMutation(e gate.HeaderEdits) *extprocv3.HeaderMutation {
	m := new(extprocv3.HeaderMutation)
	if !fillHeaderMutation(m, e) {
		return nil
	}
	return m
}

// fillHeaderMutation is headerMutation into m; false, m untouched, when
// there is nothing to edit.
func fillHeaderMutation(m *extprocv3.HeaderMutation, e gate.HeaderEdits) bool {
	if e.Empty() {
		return false
	}
	m.RemoveHeaders = e.Remove
	if n := len(e.Set); n > 0 {
		// Every answer sets headers (each exchange about ten): the
		// messages come from one array, the values' bytes from another,
		// three allocations for the lot instead of three a header.
		set := make([]struct {
			opt corev3.HeaderValueOption
			val corev3.HeaderValue
		}, n)
		size := 0
		for _, h := range e.Set {
			size += len(h.Value)
		}
		raw := make([]byte, 0, size)
		m.SetHeaders = make([]*corev3.HeaderValueOption, n)
		for i, h := range e.Set {
			start := len(raw)
			raw = append(raw, h.Value...)
			hv := &set[i]
			hv.val.Key, hv.val.RawValue = h.Name, raw[start:len(raw):len(raw)]
			hv.opt.Header, hv.opt.AppendAction = &hv.val, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
			m.SetHeaders[i] = &hv.opt
		}
	}
	return true
}

// passThroughMode switches off everything after request headers: no body
// in either direction and no response headers, so Envoy closes the stream.
var passThroughMode = &filterv3.ProcessingMode{
	RequestBodyMode:    filterv3.ProcessingMode_NONE,
	ResponseHeaderMode: filterv3.ProcessingMode_SKIP,
	ResponseBodyMode:   filterv3.ProcessingMode_NONE,
}

// streamedResponseMode switches an SSE response body to STREAMED. Envoy
// takes both body modes from an override; the request body is over by now,
// so NONE is harmless there (ProcessingResponse.mode_override).
var streamedResponseMode = &filterv3.ProcessingMode{
	RequestBodyMode:  filterv3.ProcessingMode_NONE,
	ResponseBodyMode: filterv3.ProcessingMode_STREAMED,
}

// noResponseBodyMode stops response body messages (error responses carry
// no usage worth reading).
var noResponseBodyMode = &filterv3.ProcessingMode{
	RequestBodyMode:  filterv3.ProcessingMode_NONE,
	ResponseBodyMode: filterv3.ProcessingMode_NONE,
}

// withMetadata attaches the request's access-log fields under the
// tokenwarden namespace; nothing when o is nil.
func withMetadata(r *extprocv3.ProcessingResponse, o *gate.Outcome) *extprocv3.ProcessingResponse {
	if o == nil {
		return r
	}
	// structpb.NewStringValue and NewNumberValue are two allocations a
	// field (the Value and its oneof wrapper), and the namespace's Struct
	// and Value two more; a metered answer has a dozen fields, so all of
	// them come from one block, leaving the two maps.
	var buf [observe.MaxAccessLogFields]observe.AccessLogField
	f := observe.AppendAccessLog(buf[:0], o)
	b := new(metadataBlock)
	fields := make(map[string]*structpb.Value, len(f))
	for i, fl := range f {
		if i == len(b.vals) {
			break // MaxAccessLogFields is wrong; the rest is not logged
		}
		if fl.Number {
			b.nums[i].NumberValue = fl.Num
			b.vals[i].Kind = &b.nums[i]
		} else {
			b.strs[i].StringValue = fl.Str
			b.vals[i].Kind = &b.strs[i]
		}
		fields[fl.Key] = &b.vals[i]
	}
	b.inner.Fields = fields
	b.nsKind.StructValue = &b.inner
	b.ns.Kind = &b.nsKind
	b.outer.Fields = map[string]*structpb.Value{contract.MetadataNamespace: &b.ns}
	r.DynamicMetadata = &b.outer
	return r
}

// metadataBlock holds every message of one answer's dynamic metadata but
// its maps.
type metadataBlock struct {
	outer, inner structpb.Struct
	ns           structpb.Value
	nsKind       structpb.Value_StructValue
	vals         [observe.MaxAccessLogFields]structpb.Value
	strs         [observe.MaxAccessLogFields]structpb.Value_StringValue
	nums         [observe.MaxAccessLogFields]structpb.Value_NumberValue
}
