package extproc

import (
	"runtime"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

// MaxMessageSize bounds one ext_proc message. Envoy bounds bodies with its
// own buffer limit; this only has to let the largest allowed body through
// (Anthropic accepts 32 MB request bodies), and grpc-go's 4 MiB default
// would fail larger ones with RESOURCE_EXHAUSTED
// (https://pkg.go.dev/google.golang.org/grpc#MaxRecvMsgSize).
const MaxMessageSize = 64 << 20

// StreamWorkers is the size of the gRPC server's pool of stream
// goroutines: about the streams a replica has open at once under load (16
// concurrent exchanges in the load harness measured 4% of the processor's
// CPU in runtime.newstack with one worker per core). An idle worker costs
// its parked goroutine, whose stack the GC shrinks.
const StreamWorkers = 64

// GRPCServer is the processor's gRPC server: the ext_proc service, the gRPC
// health service, and the options Envoy's client needs.
type GRPCServer struct {
	*grpc.Server
	health *health.Server
}

// NewGRPCServer registers s and a health service on a new gRPC server.
// extra are added to the server's options (transport credentials).
func (s *Server) NewGRPCServer(extra ...grpc.ServerOption) *GRPCServer {
	opts := append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageSize), grpc.MaxSendMsgSize(MaxMessageSize),
		// A fixed pool of stream workers instead of a goroutine per stream:
		// streams start on a warm stack. A stream holds its worker for the
		// whole exchange (it blocks in Recv between Envoy's messages), and
		// grpc-go starts a fresh goroutine when every worker is taken, so
		// the pool is sized for the streams open at once, not for the cores.
		grpc.NumStreamWorkers(uint32(max(StreamWorkers, runtime.GOMAXPROCS(0)))),
		// Envoy keeps its gRPC connection to the processor open and pings it.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}, codecOption()...)
	opts = append(opts, extra...)
	gs := &GRPCServer{Server: grpc.NewServer(opts...), health: health.NewServer()}
	extprocv3.RegisterExternalProcessorServer(gs.Server, s)
	healthpb.RegisterHealthServer(gs.Server, gs.health)
	return gs
}

// Drain stops accepting streams (health reports NOT_SERVING) and lets open
// ones — long LLM responses — finish, for at most timeout; then it cuts the
// rest, whose requests are settled by their streams' ends.
func (g *GRPCServer) Drain(timeout time.Duration) {
	g.health.Shutdown()
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		g.Stop()
		<-stopped
	}
}
