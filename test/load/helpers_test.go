package load

import (
	"context"
	"net"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
)

// serveInMemory serves srv on an in-memory listener and returns a sim
// filter whose streams are timed like the harness's.
func serveInMemory(tb testing.TB, srv extprocv3.ExternalProcessorServer) *sim.Filter {
	tb.Helper()
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20))
	extprocv3.RegisterExternalProcessorServer(gs, srv)
	return serveGRPCInMemory(tb, gs)
}

// serveGRPCInMemory serves gs, with its services registered, on an
// in-memory listener and returns a sim filter as serveInMemory does.
func serveGRPCInMemory(tb testing.TB, gs *grpc.Server) *sim.Filter {
	tb.Helper()
	lis := bufconn.Listen(4 << 20)
	go func() { _ = gs.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStreamInterceptor(TimingInterceptor),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		conn.Close()
		gs.Stop()
	})
	f, err := NewFilter(extprocv3.NewExternalProcessorClient(conn))
	if err != nil {
		tb.Fatal(err)
	}
	return f
}
