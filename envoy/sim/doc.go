// Package sim is a Go implementation of the client side of Envoy's HTTP
// ext_proc filter: it drives envoy.service.ext_proc.v3.ExternalProcessor/Process
// for one HTTP exchange exactly as Envoy does, so the processor can be tested,
// benchmarked and run locally without an Envoy binary.
//
// The specification is /work/shared/reference/envoy-ext-proc.md (cited below
// as "ref §N"); §11 "Harness blueprint" lists every behaviour emulated here.
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
//   - config.go: Config, defaults, processing modes and mode_override (ref §2);
//   - mutations.go: header maps, the mutation rule checker and CommonResponse
//     header/body mutation (ref §3);
//   - body.go: body sources, chunking and the per-direction body delivery
//     state machine (ref §2.2, §7);
//   - stream.go: the gRPC stream, its sender and close semantics (ref §1.1);
//   - exchange.go: the event loop, response dispatch, failures, timeouts and
//     local replies (ref §1.4, §4, §6).
//
// Not emulated: FULL_DUPLEX_STREAMED, observability_mode,
// send_body_without_waiting_for_header_response, forwarding namespaces and
// per-route ExtProcPerRoute merging (New rejects the modes it cannot emulate).
package sim
