package validate

// Every typed extension the tokenwarden configs reference, linked in so that protojson and
// anypb can resolve their "@type" URLs through protoregistry.GlobalTypes. go-control-plane has no
// blanket import package: each extension is its own Go package, registered only when linked in
// (https://pkg.go.dev/github.com/envoyproxy/go-control-plane/envoy); a config using an extension
// missing here fails with
// `unable to resolve "type.googleapis.com/…": "not found"`, which is the intended signal to add
// it below rather than a reason to skip validation.
import (
	_ "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)
