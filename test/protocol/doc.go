// Package protocol drives a real `tokenwarden serve` process with every
// message order Envoy's ext_proc filter can produce on a stream — and the
// ones it cannot — by sending ProcessingRequests itself on a raw
// ExternalProcessorClient, playing both Envoy and the provider. Each order
// must be answered message by message, or refused with a gRPC error that
// names the problem; none may crash the process or leave a reservation in
// Redis.
//
// It is a package of its own rather than part of test/e2e: e2e sends HTTP
// exchanges through envoy/sim, which by design only produces the orders a
// correctly configured Envoy produces, and shares its mock provider; here
// there is neither, and the final check reads every key of a Redis that
// only this test writes to. Its own test binary also runs alongside e2e's
// under `go test ./test/...`.
//
// What Envoy sends, in which order, and what it accepts back:
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/ext_proc_filter
// and
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto.
package protocol
