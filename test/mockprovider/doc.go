// Package mockprovider is an offline, wire-faithful stand-in for the Anthropic
// Messages API, the OpenAI Chat Completions, Responses and embeddings APIs,
// and the Gemini API's generateContent, used by tokenwarden's tests and by
// `tokenwarden mock-provider`.
//
// It is deliberately an independent implementation of the wire formats (it does
// not import the processor's dialect parsers), so that testing one against the
// other means something. Its output follows real recordings: Anthropic field
// order, whitespace padding before the final `}` of SSE data JSON,
// `{"type": "ping"}` after the first content_block_start, cumulative usage on
// message_delta; OpenAI `data:`-only chunks with `obfuscation`, a usage chunk
// with `choices: []` only when `stream_options.include_usage` is set, and
// `data: [DONE]`.
//
// Batches: Anthropic Message Batches (anthropic_batch.go) and the OpenAI
// Batch API with its files (openai_batch.go), each line counted by the token
// rule below and recorded in the ledger once, when the batch is processed.
//
// # Token rule
//
// Usage is a pure function of the request (plus, for Anthropic, the prompt
// cache state of the instance), so a test can predict it:
//
//   - Every content block is counted on its own, and the sum is the input
//     count, so any prefix of the prompt has a well-defined token count:
//     text, thinking and string content count ceil(bytes/4); tool_use counts
//     ceil((len(name)+len(input JSON))/4); tool_result counts its string content
//     or the sum of its nested blocks; image and non-text document blocks count
//     Options.ImageTokens; any other block counts ceil(len(block JSON)/4).
//   - Tool definitions count ceil((len(name)+len(description)+len(input_schema
//     JSON))/4), or ceil(len(tool JSON)/4) when they carry no input_schema.
//   - Each message adds Options.MessageOverhead tokens (default 3), attributed
//     to its first block. OpenAI adds the same per message plus 3 for the reply.
//   - Output tokens are 5 + h mod 196, where h is the FNV-1a hash of the raw
//     JSON content of the last user message, capped by max_tokens
//     (max_completion_tokens or max_tokens for OpenAI). The header
//     `x-mock-output-tokens: N` replaces the hashed value (still capped). The
//     reply is that many words, one token per word.
//
// # Prompt caching (Anthropic)
//
// Breakpoints are the cache_control markers in tools, system blocks, message
// blocks (a marker inside a tool_result's content applies at the tool_result)
// and a top-level cache_control (automatic caching: the last cacheable block).
// More than four is a 400, as is a 1h marker after a 5m one. A breakpoint
// whose prefix is shorter than the model's minimum (Options.MinCacheTokens,
// defaulting to the table in [DefaultMinCacheTokens]) silently does not cache.
// The prefix identity is a hash chain over model, tools, system and messages,
// block by block, on the block JSON exactly as sent minus its cache_control
// member. Reads look back at most 20 blocks per breakpoint. Tokens up to the
// highest hit are cache_read_input_tokens, from there to the last 1h
// breakpoint 1h writes, then to the last breakpoint 5m writes, and the rest is
// input_tokens; the three always sum to the uncached count.
//
// # Prompt caching (OpenAI)
//
// Automatic, as OpenAI's: a prompt of 1024 tokens or more warms the cache
// for 5 minutes, prefix by prefix at message boundaries (model, tools, then
// messages, exactly as sent). A later prompt starting with a warm prefix
// reports usage.prompt_tokens_details.cached_tokens as that prefix's token
// count rounded down to a multiple of 128, when at least 1024 (and
// prompt_tokens still includes them, as OpenAI's does).
//
// Explicit breakpoints, from gpt-5.6 on (Chat and Responses): a content part
// with "prompt_cache_breakpoint": {"mode": "explicit"} marks the end of a
// prefix; the latest 3 count (4 with prompt_cache_options.mode "explicit").
// The prefix up to the latest counted breakpoint is written on first sight
// (usage.prompt_tokens_details.cache_write_tokens, Responses
// input_tokens_details.cache_write_tokens), and read on a repeat from the
// latest warm one (cached_tokens), for 30 minutes, by the token rule's
// count with no rounding; the markers themselves are not part of the
// prefix. Such a request does not use the automatic cache. A marker on any
// other part type, another marker mode, or an unknown mode or ttl is a 400;
// older models ignore markers. The ledger counts a request's breakpoints.
//
// # Scripting by request header
//
//	x-mock-status: N            respond N with the dialect's error body
//	x-mock-retry-after: N       retry-after on that response (429 defaults to 1)
//	x-mock-output-tokens: N     exact output token count (capped by max tokens)
//	x-mock-error-after: N       mid-stream error event after N events
//	x-mock-disconnect-after: N  abort the connection after N events
//	x-mock-chunk-delay: 20ms    pause between events
//	x-mock-split: random|N      split every event into random or N-byte writes
//	x-mock-no-usage: true       a 200 response without any usage
//	x-mock-usage-on-delta-only: true  Anthropic stream: zeros in message_start
//	x-mock-cached-tokens: N     Responses, Gemini: N prompt tokens read from the cache
//	x-mock-cache-write-tokens: N  Responses: N prompt tokens written to the cache
//	x-mock-reasoning-tokens: N  Responses: reasoning tokens (within output_tokens
//	                            and max_output_tokens); Gemini: thoughtsTokenCount
//	x-mock-incomplete: max_output_tokens|content_filter  Responses: status incomplete
//	x-mock-service-tier: T      the service tier the response reports: OpenAI
//	                            service_tier (Chat: body and every chunk;
//	                            Responses: the response), Anthropic
//	                            usage.service_tier, Gemini usageMetadata.trafficType
//	                            (default: "default", "standard", none)
//	x-mock-compress: CODING     compress the response: gzip, br, zstd, deflate
//	                            (zlib), deflate-raw (raw DEFLATE sent as
//	                            "deflate"), or identity
//	x-mock-honour-accept-encoding: 1  let accept-encoding choose the coding
//	                            (highest q-value among gzip, br, zstd, deflate)
//	x-mock-record: true         keep the response as sent on the wire
//	x-mock-seed: N              derive ids, words, padding and obfuscation
//	                            from N: the same request, the same answer
//
// # Responses, embeddings, Gemini
//
// POST /v1/responses answers a Response object, or with stream: true the
// named events of the Responses stream (type and sequence_number first in
// each, the whole response on response.created, in_progress and the
// terminal response.completed or response.incomplete); output beyond
// max_output_tokens is cut to it and the response is incomplete. With
// background: true it answers queued, without usage, and GET
// /v1/responses/{id} returns the finished response with its usage.
// POST /v1/responses/compact answers a response.compaction object.
// POST /v1/embeddings counts string inputs by the token rule and token ids
// one each. POST /v1beta/models/{model}:generateContent (and
// :streamGenerateContent, as SSE with ?alt=sse, else as a JSON array)
// answers with cumulative usageMetadata on every chunk; the key is
// x-goog-api-key or ?key=, and errors are in Google's shape.
//
// The error-after, disconnect-after, chunk-delay and split knobs act on
// streamed responses only; events are counted from 1 and include ping.
//
// # Compression
//
// Responses are compressed only when a request asks with x-mock-compress
// or x-mock-honour-accept-encoding: Go's HTTP client offers gzip by itself,
// and a test that does not ask keeps its uncompressed bytes. Compression
// wraps the ResponseWriter every handler writes to, so JSON and SSE of any
// dialect, errors included, are compressed alike. A JSON body (its handler
// set content-length) is sent whole with its compressed length; a stream is
// flushed after every event (or x-mock-split piece), so each flushed event
// decodes on arrival, as Anthropic gzip-flushes its SSE.
//
// # Ledger and transcripts
//
// Every usage the mock sent is recorded in a ledger, served at
// GET /mock/ledger and cleared (with the cache, the transcripts and the
// rate-limit state) by POST /mock/reset. A response to a request with
// x-mock-record is kept as it went on the wire — status, every header
// (the mock sets Date itself), body bytes after compression — by request
// id: Provider.Sent, or GET /mock/sent?request_id=ID (the body in base64).
// Only framing net/http adds below it (transfer-encoding: chunked) is not
// recorded. The latest 1000 are kept, each up to 8 MiB of body. With
// x-mock-seed and a fixed Options.Now, a request replayed directly gets
// byte-identical bytes, to compare what a client received through a proxy
// with what it would have received without it.
package mockprovider
