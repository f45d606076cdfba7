package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Noop is the protocol floor: an ExternalProcessor that answers every
// message at once with an empty response of the matching type ("continue,
// unchanged"). Its one decision is the one any metering processor must make
// to let a stream flow: a text/event-stream response switches the response
// body to STREAMED, so the floor sees the same message sequence as the
// processor under test.
type Noop struct {
	extprocv3.UnimplementedExternalProcessorServer
}

var (
	streamedBody = &filterv3.ProcessingMode{ResponseBodyMode: filterv3.ProcessingMode_STREAMED}
	emptyCommon  = &extprocv3.CommonResponse{}
)

// Process implements extprocv3.ExternalProcessorServer.
func (Noop) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		resp := NoopResponse(req)
		if resp == nil {
			continue
		}
		if err := stream.Send(resp); err != nil {
			if status.Code(err) == codes.Canceled || errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// NoopResponse is the floor's answer to req: the empty response of its type,
// with the STREAMED override on SSE response headers; nil for an unknown
// message type.
func NoopResponse(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
			RequestHeaders: &extprocv3.HeadersResponse{Response: emptyCommon}}}
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{
			RequestBody: &extprocv3.BodyResponse{Response: emptyCommon}}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{
			RequestTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		resp := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
			ResponseHeaders: &extprocv3.HeadersResponse{Response: emptyCommon}}}
		if isEventStream(r.ResponseHeaders) && !r.ResponseHeaders.GetEndOfStream() {
			resp.ModeOverride = streamedBody
		}
		return resp
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{
			ResponseBody: &extprocv3.BodyResponse{Response: emptyCommon}}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{
			ResponseTrailers: &extprocv3.TrailersResponse{}}}
	}
	return nil
}

func isEventStream(h *extprocv3.HttpHeaders) bool {
	for _, hv := range h.GetHeaders().GetHeaders() {
		if hv.GetKey() != "content-type" {
			continue
		}
		v := hv.GetValue()
		if v == "" {
			v = string(hv.GetRawValue())
		}
		return strings.HasPrefix(strings.ToLower(strings.TrimSpace(v)), "text/event-stream")
	}
	return false
}

// ServeNoop serves Noop on addr until ctx ends. It prints nothing: the
// harness waits for the port.
func ServeNoop(ctx context.Context, addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("load: noop listen: %w", err)
	}
	// The same message size limits as tokenwarden serve, so a large body is
	// not rejected by one target only.
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
	extprocv3.RegisterExternalProcessorServer(gs, Noop{})
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case <-ctx.Done():
		gs.Stop()
		return nil
	case err := <-errc:
		return fmt.Errorf("load: noop serve: %w", err)
	}
}
