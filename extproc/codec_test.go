package extproc

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/gate"
)

// envoyExtras is what Envoy repeats on every message: forwarded metadata
// and attributes.
func envoyExtras(t testing.TB, r *extprocv3.ProcessingRequest) *extprocv3.ProcessingRequest {
	t.Helper()
	payload, err := structpb.NewStruct(map[string]any{"org_id": "acme", "sub": "u1", "team": "eng"})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := structpb.NewStruct(map[string]any{"xds.route_metadata.filter_metadata['tokenwarden']['policy']": "default"})
	if err != nil {
		t.Fatal(err)
	}
	r.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		"envoy.filters.http.jwt_authn": {Fields: map[string]*structpb.Value{"payload": structpb.NewStructValue(payload)}},
	}}
	r.Attributes = map[string]*structpb.Struct{"envoy.filters.http.ext_proc": attrs}
	r.ObservabilityMode = true
	r.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: filterv3.ProcessingMode_BUFFERED}
	return r
}

// extrasWire is r with envoyExtras, encoded.
func extrasWire(t testing.TB, r *extprocv3.ProcessingRequest) []byte {
	t.Helper()
	b, err := proto.Marshal(envoyExtras(t, r))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCodecDropsEnvoyContextAfterRequestHeaders(t *testing.T) {
	hdrs := &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":status", RawValue: []byte("200")}}}}
	body := &extprocv3.HttpBody{Body: []byte(`{"model":"m"}`), EndOfStream: true}
	cases := []struct {
		name string
		req  *extprocv3.ProcessingRequest
		keep bool // metadata_context and attributes are decoded
	}{
		{"request_headers", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: hdrs}}, true},
		{"request_body", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: body}}, false},
		{"response_headers", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: hdrs}}, false},
		{"response_body", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: body}}, false},
		{"response_trailers", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			full := envoyExtras(t, tc.req)
			b, err := proto.Marshal(full)
			if err != nil {
				t.Fatal(err)
			}
			want := proto.Clone(full).(*extprocv3.ProcessingRequest)
			if !tc.keep {
				want.MetadataContext, want.Attributes = nil, nil
			}
			// In field order, as Envoy writes them, and with the Envoy
			// context first and split around the message.
			for _, wire := range [][]byte{b, reorder(t, b)} {
				got := &extprocv3.ProcessingRequest{}
				if err := unmarshalRequest(wire, got); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(got, want) {
					t.Errorf("decoded\n%v\nwant\n%v", got, want)
				}
			}
		})
	}
}

// reorder moves every metadata_context and attributes field of b to the
// front, and the message oneof between them.
func reorder(t testing.TB, b []byte) []byte {
	t.Helper()
	var front, rest, mid []byte
	for off := 0; off < len(b); {
		num, typ, tl := protowire.ConsumeTag(b[off:])
		vl := protowire.ConsumeFieldValue(num, typ, b[off+tl:])
		if tl < 0 || vl < 0 {
			t.Fatal("bad wire")
		}
		f := b[off : off+tl+vl]
		switch {
		case num == fieldMetadataContext:
			front = append(front, f...)
		case num >= 2 && num <= 7:
			mid = append(mid, f...)
		default:
			rest = append(rest, f...)
		}
		off += tl + vl
	}
	out := append(front, mid...)
	for off := 0; off < len(rest); {
		num, typ, tl := protowire.ConsumeTag(rest[off:])
		vl := protowire.ConsumeFieldValue(num, typ, rest[off+tl:])
		out = append(out, rest[off:off+tl+vl]...)
		off += tl + vl
	}
	return out
}

func TestCodecMalformedIsProtoError(t *testing.T) {
	good, err := proto.Marshal(envoyExtras(t, &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte("x")}}}))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{good[:len(good)-1], good[:3], {0xff}, append(append([]byte{}, good...), 0x42, 0x05, 0x01)} {
		wantErr := proto.Unmarshal(b, &extprocv3.ProcessingRequest{})
		gotErr := unmarshalRequest(b, &extprocv3.ProcessingRequest{})
		if (wantErr == nil) != (gotErr == nil) {
			t.Errorf("% x: error %v, proto.Unmarshal says %v", b, gotErr, wantErr)
		}
	}
}

func TestCodecOtherMessages(t *testing.T) {
	opts := codecOption()
	if len(opts) != 1 {
		t.Fatalf("codec options: %d, want 1", len(opts))
	}
	c := codec{protoCodec()}
	resp := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
	data, err := c.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	got := &extprocv3.ProcessingResponse{}
	if err := c.Unmarshal(data, got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, resp) {
		t.Errorf("round trip: %v, want %v", got, resp)
	}
	// Small answers are encoded here, large ones (a rewritten body) into
	// gRPC's pooled buffers: the bytes are protobuf-go's either way.
	for _, size := range []int{10, 4 << 10} {
		r := bodyAnswer(gate.BodyVerdict{Body: make([]byte, size), BodyChanged: true})
		data, err := c.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		want, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if got := data.Materialize(); string(got) != string(want) {
			t.Errorf("a %d-byte body answer: % x, want % x", size, got, want)
		}
		data.Free()
	}
	req := envoyExtras(t, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{}}})
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	gotReq := &extprocv3.ProcessingRequest{}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, gotReq); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(gotReq, req) {
		t.Errorf("request headers through the codec: %v, want %v", gotReq, req)
	}
}

func TestCodecMarshalsMetadata(t *testing.T) {
	c := codec{protoCodec()}
	inner, err := structpb.NewStruct(map[string]any{
		"tenant": "acme", "empty": "", "cost_usd": 0.0004224, "zero": 0.0, "neg": -3.5, "ok": true, "no": false,
		"nothing": nil, "list": []any{"a", 1.0, map[string]any{"x": "y"}, []any{}}, "nested": map[string]any{}, "ünï": "cödé",
	})
	if err != nil {
		t.Fatal(err)
	}
	resp := &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{RemoveHeaders: []string{"x-a"}}}}},
		ModeOverride:    noResponseBodyMode,
		DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"tokenwarden": structpb.NewStructValue(inner), "other": structpb.NewNumberValue(1)}},
	}
	want := proto.Clone(resp)
	if _, ok := (&structEncoder{}).structSize(resp.DynamicMetadata); !ok {
		t.Fatal("the metadata would not be encoded directly")
	}
	data, err := c.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(resp, want) {
		t.Fatal("Marshal changed the answer")
	}
	b := data.Materialize()
	if len(b) != proto.Size(want) {
		t.Errorf("encoded %d bytes, protobuf-go encodes %d", len(b), proto.Size(want))
	}
	got := &extprocv3.ProcessingResponse{}
	if err := proto.Unmarshal(b, got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("decoded\n%v\nwant\n%v", got, want)
	}

	// What the direct encoder does not write goes to protobuf-go, which
	// refuses invalid UTF-8 as before.
	resp.DynamicMetadata.Fields["bad"] = structpb.NewStringValue("\xff")
	if _, err := c.Marshal(resp); err == nil {
		t.Error("invalid UTF-8 in the metadata marshalled")
	}
	delete(resp.DynamicMetadata.Fields, "bad")
	resp.DynamicMetadata.Fields["nil"] = nil
	data, err = c.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	if got := (&extprocv3.ProcessingResponse{}); proto.Unmarshal(data.Materialize(), got) != nil || len(got.DynamicMetadata.Fields) != 3 {
		t.Errorf("a nil value: %v", got)
	}
}

// BenchmarkMarshalMeteredAnswer: the last answer of a metered exchange,
// with its access-log metadata, through grpc-go's proto codec and through
// the processor's.
func BenchmarkMarshalMeteredAnswer(b *testing.B) {
	o := &gate.Outcome{Tenant: "tenant-0000", Policy: "default", RequestedModel: "gpt-4o-mini", Model: "gpt-4o-mini",
		Decision: "allowed", Metered: true, Source: gate.SourceMeasured, Usage: accounting.Usage{InputTokens: 2144, OutputTokens: 168},
		Cost: accounting.Cost{Total: 422400}}
	for _, c := range []struct {
		name string
		c    interface {
			Marshal(any) (mem.BufferSlice, error)
		}
	}{{"proto", protoCodec()}, {"processor", codec{protoCodec()}}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				data, err := c.c.Marshal(chunkAnswer(gate.ChunkVerdict{}, o))
				if err != nil {
					b.Fatal(err)
				}
				data.Free()
			}
		})
	}
}

// referenceDecode is what unmarshalRequest must match: proto.Unmarshal of
// b without its metadata_context and attributes unless b is
// request_headers (all of b when it has more top-level fields than
// unmarshalRequest scans).
func referenceDecode(b []byte) (*extprocv3.ProcessingRequest, error) {
	var kept []byte
	requestHeaders := false
	n := 0
	for off := 0; off < len(b); n++ {
		num, typ, tl := protowire.ConsumeTag(b[off:])
		if tl < 0 {
			return nil, protowire.ParseError(tl)
		}
		vl := protowire.ConsumeFieldValue(num, typ, b[off+tl:])
		if vl < 0 {
			return nil, protowire.ParseError(vl)
		}
		requestHeaders = requestHeaders || num == fieldRequestHeaders
		off += tl + vl
	}
	requestHeaders = requestHeaders || n > len(wireFields{})
	for off := 0; off < len(b); {
		num, typ, tl := protowire.ConsumeTag(b[off:])
		vl := protowire.ConsumeFieldValue(num, typ, b[off+tl:])
		if requestHeaders || (num != fieldMetadataContext && num != fieldAttributes) {
			kept = append(kept, b[off:off+tl+vl]...)
		}
		off += tl + vl
	}
	r := &extprocv3.ProcessingRequest{}
	return r, proto.Unmarshal(kept, r)
}

func headerSeeds(t testing.TB) [][]byte {
	hv := func(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, RawValue: []byte(v)} }
	many := &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		hv(":method", "POST"), hv(":path", "/v1/messages"), hv("empty", ""), {Key: "old", Value: "value-only"},
		{Key: "both", Value: "v", RawValue: []byte("raw")}, {}, hv("x-api-key", "sk-ant-\xff\x00"),
	}}, EndOfStream: true}
	var seeds [][]byte
	for _, r := range []*extprocv3.ProcessingRequest{
		{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: many}},
		{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: many}},
		{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{}}},
		{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{}}}},
		{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: many.Headers, Attributes: map[string]*structpb.Struct{"deprecated": {}}}}},
		{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte("{}")}}},
	} {
		b, err := proto.Marshal(envoyExtras(t, r))
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, b, reorder(t, b))
	}
	// Header maps twice, HeaderValue fields twice, an unknown field, and
	// invalid UTF-8 in a key: left to protobuf-go.
	hm := protowire.AppendTag(nil, fieldMapHeaders, protowire.BytesType)
	hm = protowire.AppendBytes(hm, protowire.AppendString(protowire.AppendTag(protowire.AppendString(protowire.AppendTag(nil, fieldHeaderKey, protowire.BytesType), "a"), fieldHeaderKey, protowire.BytesType), "b"))
	for _, hh := range [][]byte{
		append(protowire.AppendBytes(protowire.AppendTag(nil, fieldHeadersMap, protowire.BytesType), hm), protowire.AppendBytes(protowire.AppendTag(nil, fieldHeadersMap, protowire.BytesType), hm)...),
		protowire.AppendVarint(protowire.AppendTag(protowire.AppendBytes(protowire.AppendTag(nil, fieldHeadersMap, protowire.BytesType), hm), 9, protowire.VarintType), 1),
		protowire.AppendBytes(protowire.AppendTag(nil, fieldHeadersMap, protowire.BytesType),
			protowire.AppendBytes(protowire.AppendTag(nil, fieldMapHeaders, protowire.BytesType), protowire.AppendString(protowire.AppendTag(nil, fieldHeaderKey, protowire.BytesType), "\xff"))),
	} {
		seeds = append(seeds, protowire.AppendBytes(protowire.AppendTag(nil, fieldResponseHeaders, protowire.BytesType), hh))
	}
	return seeds
}

func checkDecode(t *testing.T, b []byte) {
	want, wantErr := referenceDecode(b)
	got := &extprocv3.ProcessingRequest{}
	gotErr := unmarshalRequest(b, got)
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("% x: error %v, want %v", b, gotErr, wantErr)
	}
	if wantErr == nil && !proto.Equal(got, want) {
		t.Fatalf("% x: decoded\n%v\nwant\n%v", b, got, want)
	}
}

// bodySeeds are request_body and response_body messages: every HttpBody
// field, none, a field given twice (the last wins), an unknown field and a
// known one with the wrong wire type (left to protobuf-go), and two bodies.
func bodySeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	for _, h := range []*extprocv3.HttpBody{
		{Body: []byte(`{"model":"m"}`), EndOfStream: true},
		{Body: []byte("chunk")},
		{},
		{EndOfStream: true, EndOfStreamWithoutMessage: true, GrpcMessageCompressed: true, DrainComplete: true},
	} {
		for _, r := range []*extprocv3.ProcessingRequest{
			{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: h}},
			{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: h}},
		} {
			b := extrasWire(t, r)
			seeds = append(seeds, b, reorder(t, b))
		}
	}
	body := func(num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
	}
	twice := append(body(fieldBody, []byte("first")), body(fieldBody, []byte("second"))...)
	twice = protowire.AppendVarint(protowire.AppendTag(twice, fieldBodyEndOfStream, protowire.VarintType), 1)
	twice = protowire.AppendVarint(protowire.AppendTag(twice, fieldBodyEndOfStream, protowire.VarintType), 0)
	unknown := protowire.AppendVarint(protowire.AppendTag(body(fieldBody, []byte("x")), 9, protowire.VarintType), 1)
	wrongType := protowire.AppendVarint(protowire.AppendTag(nil, fieldBody, protowire.VarintType), 1)
	wrongBool := body(fieldBodyEndOfStream, []byte("1"))
	for _, hb := range [][]byte{twice, unknown, wrongType, wrongBool} {
		seeds = append(seeds, body(fieldRequestBody, hb), body(fieldResponseBody, hb))
	}
	seeds = append(seeds, append(body(fieldRequestBody, twice), body(fieldRequestBody, body(fieldBody, []byte("more")))...))
	return seeds
}

// metadataSeeds are request_headers whose metadata and attributes hold
// every kind of Value: strings among numbers, bools and nulls, nested and
// empty Structs and lists, a list of strings, a repeated key.
func metadataSeeds(t testing.TB) [][]byte {
	rich, err := structpb.NewStruct(map[string]any{
		"tenant": "acme", "empty": "", "cost_usd": 0.0004224, "neg": -3.5, "ok": true, "no": false, "nothing": nil,
		"list": []any{"a", 1.0, map[string]any{"x": "y", "z": "w"}, []any{}, "b", []any{"c", "d"}}, "nested": map[string]any{},
		"claims": map[string]any{"sub": "u1", "org": "o", "n": 2.0, "roles": []any{"r1", "r2", "r3"}}, "ünï": "cödé",
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{EndOfStream: true}},
		MetadataContext: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"a": rich, "b": {}, "c": {Fields: map[string]*structpb.Value{
			"only": structpb.NewStringValue("one")}}}},
		Attributes: map[string]*structpb.Struct{"envoy.filters.http.ext_proc": rich},
	}
	b, err := proto.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	// A Struct whose key comes twice: the last value wins.
	entry := func(k, v string) []byte {
		e := protowire.AppendString(protowire.AppendTag(nil, fieldMapKey, protowire.BytesType), k)
		sv := protowire.AppendString(protowire.AppendTag(nil, fieldString, protowire.BytesType), v)
		e = protowire.AppendBytes(protowire.AppendTag(e, fieldMapValue, protowire.BytesType), sv)
		return protowire.AppendBytes(protowire.AppendTag(nil, fieldStructFields, protowire.BytesType), e)
	}
	st := append(entry("k", "first"), entry("k", "second")...)
	attr := protowire.AppendString(protowire.AppendTag(nil, fieldMapKey, protowire.BytesType), "x")
	attr = protowire.AppendBytes(protowire.AppendTag(attr, fieldMapValue, protowire.BytesType), st)
	dup := protowire.AppendBytes(protowire.AppendTag(append([]byte(nil), b...), fieldAttributes, protowire.BytesType), attr)
	return [][]byte{b, reorder(t, b), dup}
}

func TestCodecMetadata(t *testing.T) {
	for _, b := range metadataSeeds(t) {
		checkDecode(t, b)
	}
}

func TestCodecHeaders(t *testing.T) {
	for _, b := range headerSeeds(t) {
		checkDecode(t, b)
	}
}

func TestCodecBodies(t *testing.T) {
	for _, b := range bodySeeds(t) {
		checkDecode(t, b)
	}
	// The body is the decoder's own copy, not a view of the buffer gRPC
	// reuses.
	b := bodySeeds(t)[0]
	got := &extprocv3.ProcessingRequest{}
	if err := unmarshalRequest(b, got); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0
	}
	if string(got.GetRequestBody().GetBody()) != `{"model":"m"}` {
		t.Errorf("body after its buffer was reused: %q", got.GetRequestBody().GetBody())
	}
}

func FuzzUnmarshalRequest(f *testing.F) {
	for _, b := range headerSeeds(f) {
		f.Add(b)
	}
	for _, b := range bodySeeds(f) {
		f.Add(b)
	}
	for _, b := range metadataSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(checkDecode)
}

// BenchmarkUnmarshalHeaders: response_headers as Envoy sends them (eleven
// headers, the forwarded jwt_authn payload), by protobuf-go and by the
// processor's codec.
func BenchmarkUnmarshalHeaders(b *testing.B) {
	var hs []*corev3.HeaderValue
	for _, kv := range [][2]string{{":status", "200"}, {"content-type", "application/json"}, {"date", "Thu, 30 Oct 2025 16:17:35 GMT"},
		{"content-length", "595"}, {"x-request-id", "req_load"}, {"x-ratelimit-limit-requests", "100000"},
		{"x-ratelimit-remaining-requests", "99999"}, {"x-ratelimit-reset-requests", "6ms"}, {"x-ratelimit-limit-tokens", "1000000000"},
		{"x-ratelimit-remaining-tokens", "999990000"}, {"x-ratelimit-reset-tokens", "60ms"}} {
		hs = append(hs, &corev3.HeaderValue{Key: kv[0], RawValue: []byte(kv[1])})
	}
	h := &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: hs}}
	for _, r := range []*extprocv3.ProcessingRequest{
		{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: h}},
		{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: h}},
	} {
		msg := extrasWire(b, r)
		kind := "response"
		if r.GetRequestHeaders() != nil {
			kind = "request"
		}
		benchUnmarshal(b, msg, kind)
	}
}

// BenchmarkUnmarshalBody: an 8 KiB request_body as Envoy sends it (with
// the forwarded metadata and attributes), by protobuf-go and by the codec.
func BenchmarkUnmarshalBody(b *testing.B) {
	r := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{
		Body: make([]byte, 8<<10), EndOfStream: true}}}
	full := envoyExtras(b, r)
	// Envoy sends the protocol configuration with the first message only.
	full.ProtocolConfig, full.ObservabilityMode = nil, false
	msg, err := proto.Marshal(full)
	if err != nil {
		b.Fatal(err)
	}
	benchUnmarshal(b, msg, "body")
}

func benchUnmarshal(b *testing.B, msg []byte, kind string) {
	for _, d := range []struct {
		name string
		f    func([]byte, *extprocv3.ProcessingRequest) error
	}{
		{"proto", func(b []byte, r *extprocv3.ProcessingRequest) error { return proto.Unmarshal(b, r) }},
		{"processor", unmarshalRequest},
	} {
		b.Run(kind+"/"+d.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := d.f(msg, &extprocv3.ProcessingRequest{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
