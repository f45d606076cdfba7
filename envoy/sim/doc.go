// Package sim is a Go implementation of the client side of Envoy's HTTP
// ext_proc filter: it drives envoy.service.ext_proc.v3.ExternalProcessor/Process
// for one HTTP exchange exactly as Envoy does, so the processor can be tested,
// benchmarked and run locally without an Envoy binary.
//
// The behaviour emulated comes from Envoy's own API and source; comments in
// this package cite the proto field, documentation page or source function
// they follow. The main sources are:
//
//   - the protocol: https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto
//   - filter configuration: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto
//   - processing modes: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/processing_mode.proto
//   - header mutation rules: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/common/mutation_rules/v3/mutation_rules.proto
//   - the filter's documentation: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/ext_proc_filter
//   - the filter itself: https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc
//   - per-direction state (callback states, body delivery, content-length):
//     https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc
//     and https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.h
//   - header/body mutation: https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/mutation_utils.cc
//   - the mutation checker: https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/common/mutation_rules/mutation_rules.cc
//   - the gRPC stream and how it is closed: https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/common/ext_proc/grpc_client_impl.h
//   - local replies: https://github.com/envoyproxy/envoy/blob/main/source/common/http/filter_manager.cc
//   - runtime guard defaults: https://github.com/envoyproxy/envoy/blob/main/source/common/runtime/runtime_features.cc
//
// # Model
//
// A Filter holds the filter-level configuration (Config) and a gRPC client.
// Filter.Do runs one exchange: the downstream Request goes through the
// processor (request_headers, request_body, request_trailers per the
// processing mode), is handed to an Upstream once the filter "continues" the
// request headers (exactly when Envoy's router would start the upstream
// request), and the upstream response goes back through the processor
// (response_headers, response_body, response_trailers). Do returns as soon as
// the response headers leave the filter; the Response body is released to the
// reader chunk by chunk, only as the processor answers each chunk (STREAMED)
// or after the whole body was answered (BUFFERED).
//
// Each exchange runs a single event loop goroutine (exchange.go) that owns all
// state; helper goroutines only move bytes (body sources, gRPC send and
// receive, the upstream round trip) and talk to the loop over channels. That
// mirrors Envoy's single-threaded dispatcher and keeps the state machine free
// of locks. The files are split by concern:
//
//   - config.go: Config, defaults, processing modes and mode_override;
//   - mutations.go: header maps, the mutation rule checker and CommonResponse
//     header/body mutation (CommonResponse);
//   - body.go: body sources, chunking and the per-direction body delivery
//     state machine, including STREAMED pipelining of SSE;
//   - stream.go: the gRPC stream, its sender and close semantics;
//   - exchange.go: the event loop, response dispatch, failures, timeouts and
//     local replies (spurious responses, ImmediateResponse, failure_mode_allow).
//
// Not emulated: FULL_DUPLEX_STREAMED, observability_mode,
// send_body_without_waiting_for_header_response, forwarding namespaces and
// per-route ExtProcPerRoute merging (New rejects the modes it cannot emulate).
package sim
