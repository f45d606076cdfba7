package extproc

import (
	"math"
	"unicode/utf8"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// ProcessingRequest field numbers
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto).
const (
	fieldRequestHeaders   protowire.Number = 2
	fieldResponseHeaders  protowire.Number = 3
	fieldRequestBody      protowire.Number = 4
	fieldResponseBody     protowire.Number = 5
	fieldResponseTrailers protowire.Number = 7
	fieldMetadataContext  protowire.Number = 8
	fieldAttributes       protowire.Number = 9
)

// codec is the processor's gRPC codec: grpc-go's proto codec, except that a
// ProcessingRequest that is not request_headers is decoded without its
// metadata_context and attributes. Envoy repeats both on every message of a
// stream (the forwarded metadata namespaces, the configured attributes);
// tokenwarden reads them only at request headers (stream.requestHeaders),
// and decoding their Struct maps again for each later message was the
// largest part of what Recv cost. Everything else is decoded as the proto
// codec does, from the same bytes.
type codec struct{ encoding.CodecV2 }

// codecOption is the server option for codec; none, and grpc-go's own
// codec, if the proto codec is not registered (it registers itself when its
// package, imported here, is loaded).
func codecOption() []grpc.ServerOption {
	c := protoCodec()
	if c == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.ForceServerCodecV2(codec{c})}
}

// protoCodec is grpc-go's proto codec, which codec wraps.
func protoCodec() encoding.CodecV2 { return encoding.GetCodecV2(grpcproto.Name) }

// Unmarshal implements encoding.CodecV2.
func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	req, ok := v.(*extprocv3.ProcessingRequest)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return unmarshalRequest(buf.ReadOnlyData(), req)
}

// unmarshalRequest decodes b into req as proto.Unmarshal does, with two
// differences that only change what it costs:
//   - metadata_context and attributes are left out unless b is
//     request_headers;
//   - request_headers and response_headers are decoded here (decodeHeaders)
//     into one array of HeaderValues and one block of bytes, instead of
//     three allocations a header;
//   - request_body and response_body are decoded here (decodeBody), the
//     body copied once as protobuf-go copies it, without its reflection;
//   - request_headers' metadata_context and attributes are decoded here
//     (decodeMetadata, decodeAttribute) without reflection.
//
// A message is the concatenation of its fields and decoding pieces with
// Merge is decoding the whole
// (https://protobuf.dev/programming-guides/encoding/#last-one-wins), so the
// other fields are decoded by protobuf-go in runs between these. Anything
// that does not scan cleanly, or that decodeHeaders does not know, is left
// to proto.Unmarshal, whose error it reports.
func unmarshalRequest(b []byte, req *extprocv3.ProcessingRequest) error {
	// Envoy sends up to five top-level fields; more go to proto.Unmarshal.
	var fields wireFields
	n, messages, metadataFields, requestHeaders := 0, 0, 0, false
	for off := 0; off < len(b); {
		num, typ, tl := protowire.ConsumeTag(b[off:])
		if tl < 0 {
			return proto.Unmarshal(b, req)
		}
		vl := protowire.ConsumeFieldValue(num, typ, b[off+tl:])
		if vl < 0 || n == len(fields) {
			return proto.Unmarshal(b, req)
		}
		fields[n] = wireField{num: num, typ: typ, from: off, value: off + tl, to: off + tl + vl}
		n++
		if num >= fieldRequestHeaders && num <= fieldResponseTrailers {
			messages++ // a field of the request oneof
		}
		requestHeaders = requestHeaders || num == fieldRequestHeaders
		if num == fieldMetadataContext {
			metadataFields++
		}
		off += tl + vl
	}
	proto.Reset(req)
	merge := proto.UnmarshalOptions{Merge: true}
	run := -1 // start of the fields protobuf-go is to decode next
	for _, f := range fields[:n] {
		switch f.num {
		case fieldMetadataContext, fieldAttributes, fieldRequestHeaders, fieldResponseHeaders, fieldRequestBody, fieldResponseBody:
			// Decoded here, perhaps: what came before is decoded first, so
			// a later value (a repeated map key) still wins.
			if run >= 0 {
				if err := merge.Unmarshal(b[run:f.from], req); err != nil {
					return err
				}
				run = -1
			}
		}
		own := false
		switch f.num {
		case fieldMetadataContext:
			own = !requestHeaders
			if own || metadataFields != 1 || f.typ != protowire.BytesType {
				break
			}
			v, _ := protowire.ConsumeBytes(b[f.value:f.to])
			if m, ok := decodeMetadata(v); ok {
				req.MetadataContext, own = m, true
			}
		case fieldAttributes:
			own = !requestHeaders
			if own || f.typ != protowire.BytesType {
				break
			}
			v, _ := protowire.ConsumeBytes(b[f.value:f.to])
			own = decodeAttribute(v, req)
		case fieldRequestHeaders, fieldResponseHeaders, fieldRequestBody, fieldResponseBody:
			if messages != 1 || f.typ != protowire.BytesType {
				break
			}
			v, _ := protowire.ConsumeBytes(b[f.value:f.to])
			own = decodeMessage(f.num, v, req)
		}
		if !own && run < 0 {
			run = f.from
		}
	}
	if run >= 0 {
		return merge.Unmarshal(b[run:], req)
	}
	return nil
}

// decodeMessage decodes the request oneof's headers or body message into
// req; false leaves it to protobuf-go, req untouched.
func decodeMessage(num protowire.Number, v []byte, req *extprocv3.ProcessingRequest) bool {
	var (
		h    *extprocv3.HttpHeaders
		body *extprocv3.HttpBody
		ok   bool
	)
	if num == fieldRequestHeaders || num == fieldResponseHeaders {
		h, ok = decodeHeaders(v)
	} else {
		body, ok = decodeBody(v)
	}
	if !ok {
		return false
	}
	switch num {
	case fieldRequestHeaders:
		req.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: h}
	case fieldResponseHeaders:
		req.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: h}
	case fieldRequestBody:
		req.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: body}
	default:
		req.Request = &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: body}
	}
	return true
}

type wireFields [12]wireField

// wireField is where one top-level field lies in a message.
type wireField struct {
	num             protowire.Number
	typ             protowire.Type
	from, value, to int
}

// HttpHeaders, HeaderMap and HeaderValue field numbers
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto,
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/base.proto).
const (
	fieldHeadersMap         protowire.Number = 1 // HttpHeaders.headers
	fieldHeadersEndOfStream protowire.Number = 3 // HttpHeaders.end_of_stream
	fieldMapHeaders         protowire.Number = 1 // HeaderMap.headers
	fieldHeaderKey          protowire.Number = 1
	fieldHeaderValue        protowire.Number = 2
	fieldHeaderRawValue     protowire.Number = 3
)

// decodeHeaders decodes an HttpHeaders message as protobuf-go would; false
// for anything it does not know (the deprecated attributes field, a field
// added later, a repeated header map, invalid UTF-8 in a string field),
// which is then left to protobuf-go.
func decodeHeaders(b []byte) (*extprocv3.HttpHeaders, bool) {
	h := &extprocv3.HttpHeaders{}
	var hm []byte
	seenMap := false
	ok := eachField(b, func(num protowire.Number, typ protowire.Type, b []byte) int {
		switch {
		case num == fieldHeadersMap && typ == protowire.BytesType && !seenMap:
			var n int
			hm, n = protowire.ConsumeBytes(b)
			seenMap = true
			return n
		case num == fieldHeadersEndOfStream && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			h.EndOfStream = protowire.DecodeBool(v)
			return n
		}
		return -1
	})
	if !ok {
		return nil, false
	}
	if seenMap {
		m, ok := decodeHeaderMap(hm)
		if !ok {
			return nil, false
		}
		h.Headers = m
	}
	return h, true
}

// eachField calls field with each field's number, type and the bytes from
// its value on, which consumes the value and says how much it took, or
// -1 for a field it does not take; false for that or bad wire.
func eachField(b []byte, field func(num protowire.Number, typ protowire.Type, b []byte) int) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if n = field(num, typ, b); n < 0 {
			return false
		}
		b = b[n:]
	}
	return true
}

// HttpBody field numbers: body, then four bools.
const (
	fieldBody            protowire.Number = 1
	fieldBodyEndOfStream protowire.Number = 2
	fieldBodyLastBool    protowire.Number = 5 // drain_complete
)

// decodeBody decodes an HttpBody message as protobuf-go would: the last
// value of a field wins, and the body is copied out of b (gRPC's receive
// buffer, which goes back to its pool after Unmarshal) into an array of
// its own. False for a field it does not know (one added later), which is
// then left to protobuf-go.
func decodeBody(b []byte) (*extprocv3.HttpBody, bool) {
	h := &extprocv3.HttpBody{}
	var body []byte
	ok := eachField(b, func(num protowire.Number, typ protowire.Type, b []byte) int {
		switch {
		case num == fieldBody && typ == protowire.BytesType:
			var n int
			body, n = protowire.ConsumeBytes(b)
			return n
		case num >= fieldBodyEndOfStream && num <= fieldBodyLastBool && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			set := protowire.DecodeBool(v)
			switch num {
			case fieldBodyEndOfStream:
				h.EndOfStream = set
			case fieldBodyEndOfStream + 1:
				h.EndOfStreamWithoutMessage = set
			case fieldBodyEndOfStream + 2:
				h.GrpcMessageCompressed = set
			default:
				h.DrainComplete = set
			}
			return n
		}
		return -1
	})
	if !ok {
		return nil, false
	}
	if len(body) > 0 {
		h.Body = append([]byte(nil), body...)
	}
	return h, true
}

// decodeHeaderMap decodes a HeaderMap: a first pass checks it and counts
// headers and bytes, the second fills one HeaderValue array and one byte
// block. Keys and values are strings over the block and raw values slices
// of it; nothing writes to the block once it is filled, so they are as
// immutable as protobuf-go's copies.
func decodeHeaderMap(b []byte) (*corev3.HeaderMap, bool) {
	count, size := 0, 0
	for rest := b; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 || num != fieldMapHeaders || typ != protowire.BytesType {
			return nil, false
		}
		rest = rest[n:]
		hv, n := protowire.ConsumeBytes(rest)
		if n < 0 {
			return nil, false
		}
		rest = rest[n:]
		for len(hv) > 0 {
			num, typ, n := protowire.ConsumeTag(hv)
			if n < 0 || num < fieldHeaderKey || num > fieldHeaderRawValue || typ != protowire.BytesType {
				return nil, false
			}
			hv = hv[n:]
			v, n := protowire.ConsumeBytes(hv)
			if n < 0 || (num != fieldHeaderRawValue && !utf8.Valid(v)) {
				return nil, false
			}
			hv = hv[n:]
			size += len(v)
		}
		count++
	}
	m := &corev3.HeaderMap{}
	if count == 0 {
		return m, true
	}
	vals := make([]corev3.HeaderValue, count)
	m.Headers = make([]*corev3.HeaderValue, count)
	block := make([]byte, 0, size)
	i := 0
	for rest := b; len(rest) > 0; i++ {
		_, _, n := protowire.ConsumeTag(rest)
		rest = rest[n:]
		hv, n := protowire.ConsumeBytes(rest)
		rest = rest[n:]
		for len(hv) > 0 {
			num, _, n := protowire.ConsumeTag(hv)
			hv = hv[n:]
			v, n := protowire.ConsumeBytes(hv)
			hv = hv[n:]
			start := len(block)
			block = append(block, v...)
			own := block[start:len(block):len(block)]
			switch num {
			case fieldHeaderKey:
				vals[i].Key = unsafe.String(unsafe.SliceData(own), len(own))
			case fieldHeaderValue:
				vals[i].Value = unsafe.String(unsafe.SliceData(own), len(own))
			case fieldHeaderRawValue:
				vals[i].RawValue = own
			}
		}
		m.Headers[i] = &vals[i]
	}
	return m, true
}

// decodeMetadata decodes request_headers' metadata_context, Envoy's
// forwarded dynamic metadata (a map of Structs), without protobuf-go's
// reflection over map fields, which was most of what decoding request
// headers cost. The bytes are copied once and strings are views of the
// copy. False for anything decodeStruct does not know (typed metadata,
// unknown fields), which protobuf-go then decodes.
func decodeMetadata(b []byte) (*corev3.Metadata, bool) {
	own := append([]byte(nil), b...)
	m := &corev3.Metadata{}
	for len(own) > 0 {
		e, rest, ok := nextBytes(own, fieldFilterMetadata)
		if !ok {
			return nil, false
		}
		own = rest
		k, st, ok := decodeStructEntry(e, 0)
		if !ok {
			return nil, false
		}
		if m.FilterMetadata == nil {
			m.FilterMetadata = make(map[string]*structpb.Struct, 2)
		}
		m.FilterMetadata[k] = st
	}
	return m, true
}

// decodeAttribute decodes one entry of request_headers' attributes (a map
// of Structs) into req, as decodeMetadata does; false leaves it to
// protobuf-go, in which case req is untouched.
func decodeAttribute(b []byte, req *extprocv3.ProcessingRequest) bool {
	k, st, ok := decodeStructEntry(append([]byte(nil), b...), 0)
	if !ok {
		return false
	}
	if req.Attributes == nil {
		req.Attributes = make(map[string]*structpb.Struct, 1)
	}
	req.Attributes[k] = st
	return true
}

// Metadata.filter_metadata's field number, and how deep decodeStruct goes
// before it leaves a Struct to protobuf-go (whose own limit is 10,000).
const (
	fieldFilterMetadata protowire.Number = 1
	maxStructDepth                       = 32
)

// view is b as a string. Only for bytes the decoder copied out of gRPC's
// buffer and never writes again.
func view(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// nextBytes reads one length-delimited field numbered want off the front
// of b: its value and what follows; false for any other field or bad wire.
func nextBytes(b []byte, want protowire.Number) (v, rest []byte, ok bool) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 || num != want || typ != protowire.BytesType {
		return nil, nil, false
	}
	v, m := protowire.ConsumeBytes(b[n:])
	if m < 0 {
		return nil, nil, false
	}
	return v, b[n+m:], true
}

// mapEntry splits a map<string, message> entry into its key and its
// value's bytes; false for a value given twice (protobuf-go merges those),
// an unknown field or a key that is not UTF-8.
func mapEntry(e []byte) (key string, val []byte, hasVal, ok bool) {
	for len(e) > 0 {
		num, typ, n := protowire.ConsumeTag(e)
		if n < 0 || typ != protowire.BytesType || (num != fieldMapKey && num != fieldMapValue) {
			return "", nil, false, false
		}
		v, m := protowire.ConsumeBytes(e[n:])
		if m < 0 {
			return "", nil, false, false
		}
		e = e[n+m:]
		switch {
		case num == fieldMapKey && utf8.Valid(v):
			key = view(v)
		case num == fieldMapValue && !hasVal:
			val, hasVal = v, true
		default:
			return "", nil, false, false
		}
	}
	return key, val, hasVal, true
}

// decodeStructEntry decodes a map<string, Struct> entry (key 1, value 2).
// A missing value is left to protobuf-go.
func decodeStructEntry(b []byte, depth int) (string, *structpb.Struct, bool) {
	key, val, hasVal, ok := mapEntry(b)
	if !ok || !hasVal {
		return "", nil, false
	}
	st, ok := decodeStruct(val, depth)
	return key, st, ok
}

// decodeStruct decodes a google.protobuf.Struct. Its Values come from one
// array and its string kinds from another (kinds), instead of two
// allocations a field: a forwarded JWT payload is a dozen of them on every
// request. Nothing writes to a received message, so sharing an array is as
// safe as protobuf-go's separate allocations.
func decodeStruct(b []byte, depth int) (*structpb.Struct, bool) {
	if depth > maxStructDepth {
		return nil, false
	}
	n, ok := countFields(b, fieldStructFields)
	if !ok {
		return nil, false
	}
	s := &structpb.Struct{}
	if n == 0 {
		return s, true
	}
	vals := make([]structpb.Value, n)
	kinds := kindBlock{left: n}
	s.Fields = make(map[string]*structpb.Value, n)
	for i := range vals {
		e, rest, _ := nextBytes(b, fieldStructFields) // countFields checked it
		b, kinds.left = rest, n-i
		key, val, hasVal, ok := mapEntry(e)
		if !ok || !hasVal || !decodeValue(val, depth, &vals[i], &kinds) {
			return nil, false
		}
		s.Fields[key] = &vals[i]
	}
	return s, true
}

// countFields counts the length-delimited fields numbered want that make
// up b; false for any other field or bad wire.
func countFields(b []byte, want protowire.Number) (int, bool) {
	n := 0
	for len(b) > 0 {
		_, rest, ok := nextBytes(b, want)
		if !ok {
			return 0, false
		}
		b = rest
		n++
	}
	return n, true
}

// kindBlock hands out the string kinds of one Struct's or ListValue's
// Values from one array, sized when the first string arrives for the
// values still to decode (left, this one included, which the caller sets). The array never
// grows past its capacity, so the pointers it gave out stay valid.
type kindBlock struct {
	strs []structpb.Value_StringValue
	left int
}

func (k *kindBlock) str(s string) *structpb.Value_StringValue {
	if len(k.strs) == cap(k.strs) {
		k.strs = make([]structpb.Value_StringValue, 0, k.left)
	}
	k.strs = append(k.strs, structpb.Value_StringValue{StringValue: s})
	return &k.strs[len(k.strs)-1]
}

// decodeValue decodes a google.protobuf.Value holding at most one kind
// into v, a string kind from kinds.
func decodeValue(b []byte, depth int, v *structpb.Value, kinds *kindBlock) bool {
	if len(b) == 0 {
		return true
	}
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return false
	}
	b = b[n:]
	switch {
	case num == fieldNull && typ == protowire.VarintType:
		x, m := protowire.ConsumeVarint(b)
		n = m
		v.Kind = &structpb.Value_NullValue{NullValue: structpb.NullValue(int32(x))}
	case num == fieldNumber && typ == protowire.Fixed64Type:
		x, m := protowire.ConsumeFixed64(b)
		n = m
		v.Kind = &structpb.Value_NumberValue{NumberValue: math.Float64frombits(x)}
	case num == fieldBool && typ == protowire.VarintType:
		x, m := protowire.ConsumeVarint(b)
		n = m
		v.Kind = &structpb.Value_BoolValue{BoolValue: protowire.DecodeBool(x)}
	case typ == protowire.BytesType && (num == fieldString || num == fieldStruct || num == fieldList):
		x, m := protowire.ConsumeBytes(b)
		if n = m; n < 0 {
			return false
		}
		switch num {
		case fieldString:
			if !utf8.Valid(x) {
				return false
			}
			v.Kind = kinds.str(view(x))
		case fieldStruct:
			st, ok := decodeStruct(x, depth+1)
			if !ok {
				return false
			}
			v.Kind = &structpb.Value_StructValue{StructValue: st}
		case fieldList:
			l, ok := decodeList(x, depth+1)
			if !ok {
				return false
			}
			v.Kind = &structpb.Value_ListValue{ListValue: l}
		}
	default:
		return false
	}
	// Malformed, or more than one field: protobuf-go's.
	return n >= 0 && n == len(b)
}

// decodeList decodes a google.protobuf.ListValue, its Values and string
// kinds from one array each, as decodeStruct does.
func decodeList(b []byte, depth int) (*structpb.ListValue, bool) {
	if depth > maxStructDepth {
		return nil, false
	}
	n, ok := countFields(b, fieldListValues)
	if !ok {
		return nil, false
	}
	l := &structpb.ListValue{}
	if n == 0 {
		return l, true
	}
	vals := make([]structpb.Value, n)
	kinds := kindBlock{left: n}
	l.Values = make([]*structpb.Value, n)
	for i := range vals {
		e, rest, _ := nextBytes(b, fieldListValues)
		b, kinds.left = rest, n-i
		if !decodeValue(e, depth, &vals[i], &kinds) {
			return nil, false
		}
		l.Values[i] = &vals[i]
	}
	return l, true
}

// Marshal implements encoding.CodecV2. An answer with dynamic metadata has
// its Struct encoded here, directly from its maps: protobuf-go encodes map
// fields through reflection, and the metadata, a dozen fields on every
// metered answer, was most of what marshalling an answer cost. The rest of
// the answer, and any metadata holding what this encoder does not write
// (invalid UTF-8, a nil value), goes through the proto codec.
//
// An answer without metadata is encoded as the proto codec encodes one
// below gRPC's pooling threshold, into one allocation fewer (oneBuffer).
func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	r, ok := v.(*extprocv3.ProcessingResponse)
	if !ok {
		return c.CodecV2.Marshal(v)
	}
	if r.DynamicMetadata == nil {
		// Sized first, so that UseCachedSize is safe (the proto codec does
		// the same).
		size := proto.Size(r)
		if !mem.IsBelowBufferPoolingThreshold(size) {
			return c.CodecV2.Marshal(v) // a pooled buffer, given back once written
		}
		buf, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(make([]byte, 0, size), r)
		if err != nil {
			return nil, err
		}
		return oneBuffer(buf), nil
	}
	md := r.DynamicMetadata
	var enc structEncoder
	mdSize, ok := enc.structSize(md)
	if !ok {
		return c.CodecV2.Marshal(v)
	}
	// The answer is the sending goroutine's own until Send returns, and
	// Send marshals before it returns: the field is put back before anyone
	// else can look.
	r.DynamicMetadata = nil
	defer func() { r.DynamicMetadata = md }()
	size := proto.Size(r)
	buf := make([]byte, 0, size+protowire.SizeTag(fieldDynamicMetadata)+protowire.SizeBytes(mdSize))
	buf, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(buf, r)
	if err != nil {
		return nil, err
	}
	buf = protowire.AppendTag(buf, fieldDynamicMetadata, protowire.BytesType)
	buf = protowire.AppendVarint(buf, uint64(mdSize))
	buf = enc.appendStruct(buf, md)
	return oneBuffer(buf), nil
}

// singleBuffer is a BufferSlice of one SliceBuffer in one allocation:
// mem.BufferSlice{mem.SliceBuffer(b)} is two, the slice's array and the
// boxed slice header. A SliceBuffer is not pooled (Free does nothing), so
// gRPC may hold it as long as it likes.
type singleBuffer struct {
	slice [1]mem.Buffer
	buf   mem.SliceBuffer
}

func oneBuffer(b []byte) mem.BufferSlice {
	s := &singleBuffer{buf: b}
	s.slice[0] = &s.buf
	return s.slice[:]
}

// ProcessingResponse.dynamic_metadata and the structpb field numbers
// (https://github.com/protocolbuffers/protobuf/blob/main/src/google/protobuf/struct.proto).
const (
	fieldDynamicMetadata protowire.Number = 8

	fieldStructFields                              = 1 // Struct.fields, map<string, Value>
	fieldMapKey, fieldMapValue                     = 1, 2
	fieldNull, fieldNumber, fieldString, fieldBool = 1, 2, 3, 4
	fieldStruct, fieldList                         = 5, 6
	fieldListValues                                = 1 // ListValue.values
)

// structEncoder encodes a Struct in two passes, sizes then bytes. Every
// nested message is length-prefixed, so the bytes pass needs the size of
// each nested Struct and ListValue; the sizes pass records them by pointer
// (map order differs between the passes) so that each map is walked, and
// each string validated, once per pass.
//
// The records are arrays, so that the encoder lives on its caller's stack;
// metadata with more nested messages than they hold is left to protobuf-go.
type structEncoder struct {
	structs [8]sizedStruct
	lists   [4]sizedList
	ns, nl  int
}

type sizedStruct struct {
	s *structpb.Struct
	n int
}

type sizedList struct {
	l *structpb.ListValue
	n int
}

// structSize is s's encoded size; false if s holds what appendStruct does
// not encode exactly as protobuf-go would.
func (e *structEncoder) structSize(s *structpb.Struct) (int, bool) {
	n := 0
	for k, v := range s.GetFields() {
		vs, ok := e.valueSize(v)
		if !ok || !utf8.ValidString(k) {
			return 0, false
		}
		n += entrySize(k, vs)
	}
	if e.ns == len(e.structs) {
		return 0, false
	}
	e.structs[e.ns] = sizedStruct{s, n}
	e.ns++
	return n, true
}

// entrySize is the size of one Struct.fields map entry, tag included.
func entrySize(k string, valueSize int) int {
	e := protowire.SizeTag(fieldMapKey) + protowire.SizeBytes(len(k)) + protowire.SizeTag(fieldMapValue) + protowire.SizeBytes(valueSize)
	return protowire.SizeTag(fieldStructFields) + protowire.SizeBytes(e)
}

func (e *structEncoder) valueSize(v *structpb.Value) (int, bool) {
	if v == nil {
		return 0, false
	}
	switch k := v.Kind.(type) {
	case *structpb.Value_NullValue:
		return protowire.SizeTag(fieldNull) + protowire.SizeVarint(uint64(k.NullValue)), true
	case *structpb.Value_NumberValue:
		return protowire.SizeTag(fieldNumber) + protowire.SizeFixed64(), true
	case *structpb.Value_StringValue:
		return protowire.SizeTag(fieldString) + protowire.SizeBytes(len(k.StringValue)), utf8.ValidString(k.StringValue)
	case *structpb.Value_BoolValue:
		return protowire.SizeTag(fieldBool) + protowire.SizeVarint(protowire.EncodeBool(k.BoolValue)), true
	case *structpb.Value_StructValue:
		if k.StructValue == nil {
			return 0, false
		}
		n, ok := e.structSize(k.StructValue)
		return protowire.SizeTag(fieldStruct) + protowire.SizeBytes(n), ok
	case *structpb.Value_ListValue:
		if k.ListValue == nil {
			return 0, false
		}
		n := 0
		for _, v := range k.ListValue.Values {
			vs, ok := e.valueSize(v)
			if !ok {
				return 0, false
			}
			n += protowire.SizeTag(fieldListValues) + protowire.SizeBytes(vs)
		}
		if e.nl == len(e.lists) {
			return 0, false
		}
		e.lists[e.nl] = sizedList{k.ListValue, n}
		e.nl++
		return protowire.SizeTag(fieldList) + protowire.SizeBytes(n), true
	}
	return 0, false // no kind: left to protobuf-go
}

// sizeOf is the size the sizes pass found for a Value's content.
func (e *structEncoder) sizeOf(v *structpb.Value) int {
	switch k := v.Kind.(type) {
	case *structpb.Value_StructValue:
		return protowire.SizeTag(fieldStruct) + protowire.SizeBytes(e.structLen(k.StructValue))
	case *structpb.Value_ListValue:
		return protowire.SizeTag(fieldList) + protowire.SizeBytes(e.listLen(k.ListValue))
	}
	n, _ := e.valueSize(v) // a scalar: nothing recorded, nothing walked
	return n
}

func (e *structEncoder) structLen(s *structpb.Struct) int {
	for _, r := range e.structs[:e.ns] {
		if r.s == s {
			return r.n
		}
	}
	return 0 // not reached: the sizes pass saw every Struct
}

func (e *structEncoder) listLen(l *structpb.ListValue) int {
	for _, r := range e.lists[:e.nl] {
		if r.l == l {
			return r.n
		}
	}
	return 0
}

// appendStruct encodes s, which structSize accepted.
func (e *structEncoder) appendStruct(b []byte, s *structpb.Struct) []byte {
	for k, v := range s.Fields {
		vs := e.sizeOf(v)
		b = protowire.AppendTag(b, fieldStructFields, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(protowire.SizeTag(fieldMapKey)+protowire.SizeBytes(len(k))+protowire.SizeTag(fieldMapValue)+protowire.SizeBytes(vs)))
		b = protowire.AppendTag(b, fieldMapKey, protowire.BytesType)
		b = protowire.AppendString(b, k)
		b = protowire.AppendTag(b, fieldMapValue, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(vs))
		b = e.appendValue(b, v)
	}
	return b
}

func (e *structEncoder) appendValue(b []byte, v *structpb.Value) []byte {
	switch k := v.Kind.(type) {
	case *structpb.Value_NullValue:
		b = protowire.AppendTag(b, fieldNull, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(k.NullValue))
	case *structpb.Value_NumberValue:
		b = protowire.AppendTag(b, fieldNumber, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(k.NumberValue))
	case *structpb.Value_StringValue:
		b = protowire.AppendTag(b, fieldString, protowire.BytesType)
		b = protowire.AppendString(b, k.StringValue)
	case *structpb.Value_BoolValue:
		b = protowire.AppendTag(b, fieldBool, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeBool(k.BoolValue))
	case *structpb.Value_StructValue:
		b = protowire.AppendTag(b, fieldStruct, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(e.structLen(k.StructValue)))
		b = e.appendStruct(b, k.StructValue)
	case *structpb.Value_ListValue:
		b = protowire.AppendTag(b, fieldList, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(e.listLen(k.ListValue)))
		for _, v := range k.ListValue.Values {
			b = protowire.AppendTag(b, fieldListValues, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(e.sizeOf(v)))
			b = e.appendValue(b, v)
		}
	}
	return b
}
