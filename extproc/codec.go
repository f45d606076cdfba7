package extproc

import (
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// ProcessingRequest field numbers
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto).
const (
	fieldRequestHeaders  protowire.Number = 2
	fieldMetadataContext protowire.Number = 8
	fieldAttributes      protowire.Number = 9
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
	c := encoding.GetCodecV2(grpcproto.Name)
	if c == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.ForceServerCodecV2(codec{c})}
}

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

// unmarshalRequest decodes b into req, leaving out metadata_context and
// attributes unless b is request_headers. A message is the concatenation of
// its fields and decoding pieces with Merge is decoding the whole
// (https://protobuf.dev/programming-guides/encoding/#last-one-wins), so the
// fields between the left-out ones are decoded in place. Anything that does
// not scan cleanly is left to proto.Unmarshal, whose error it reports.
func unmarshalRequest(b []byte, req *extprocv3.ProcessingRequest) error {
	// Up to three skipped ranges in practice (one each, in field order);
	// more fall back to one plain decode.
	var skip [4][2]int
	n := 0
	for off := 0; off < len(b); {
		num, typ, tl := protowire.ConsumeTag(b[off:])
		if tl < 0 {
			return proto.Unmarshal(b, req)
		}
		vl := protowire.ConsumeFieldValue(num, typ, b[off+tl:])
		if vl < 0 {
			return proto.Unmarshal(b, req)
		}
		switch num {
		case fieldRequestHeaders:
			return proto.Unmarshal(b, req)
		case fieldMetadataContext, fieldAttributes:
			if n > 0 && skip[n-1][1] == off {
				skip[n-1][1] = off + tl + vl // adjacent: one range
			} else if n == len(skip) {
				return proto.Unmarshal(b, req)
			} else {
				skip[n] = [2]int{off, off + tl + vl}
				n++
			}
		}
		off += tl + vl
	}
	if n == 0 {
		return proto.Unmarshal(b, req)
	}
	proto.Reset(req)
	merge := proto.UnmarshalOptions{Merge: true}
	from := 0
	for _, s := range skip[:n] {
		if s[0] > from {
			if err := merge.Unmarshal(b[from:s[0]], req); err != nil {
				return err
			}
		}
		from = s[1]
	}
	if from < len(b) {
		return merge.Unmarshal(b[from:], req)
	}
	return nil
}
