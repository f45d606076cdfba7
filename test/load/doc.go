// Package load is tokenwarden's load harness: it drives a processor through
// envoy/sim exactly as Envoy's ext_proc filter would, under an open-loop
// (fixed rate) or closed-loop (fixed concurrency) schedule with a realistic
// mix of Anthropic and OpenAI exchanges, JSON and SSE responses, 2–200 KB
// request bodies and many tenants, and reports every figure as a ratio
// against a no-op ext_proc server (the protocol floor) measured in the same
// run under the same load.
//
// What is measured, and how:
//
//   - Full exchange latency runs from the exchange's intended start (open
//     loop: its slot in the schedule, so a stalled processor cannot hide its
//     queueing — no coordinated omission; closed loop: the actual start) to
//     the client reading the last response byte.
//   - Phase latency is the time from sending each ext_proc message on the
//     gRPC stream to receiving its answer, taken by a client stream
//     interceptor under sim (answers come in order on a stream, so they are
//     matched FIFO). SSE chunks are pipelined, so a chunk's latency includes
//     waiting behind earlier chunks, as it does in Envoy.
//   - Processor CPU comes from /proc/<pid>/stat (utime+stime), RSS from
//     /proc/<pid>/status (VmRSS sampled during the phase, VmHWM), Redis work
//     from INFO commandstats deltas of the harness's own redis-server.
//
// The no-op floor (Noop) answers every message with an empty response of the
// matching type and, like any processor that meters streams must, switches a
// text/event-stream response body to STREAMED from its response_headers
// answer; both targets therefore see the same message sequence. It runs as a
// separate process (the harness binary re-executed) so its CPU and RSS are
// measured exactly like tokenwarden's.
package load
