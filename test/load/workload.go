package load

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
	"github.com/tokenwarden/tokenwarden/envoy/sim"
)

// Mix describes the traffic: which dialects and response kinds, how large
// the request bodies are, and how many tenants share the load.
type Mix struct {
	// OpenAI is the fraction of exchanges in the OpenAI Chat Completions
	// dialect; the rest are Anthropic Messages.
	OpenAI float64
	// SSE is the fraction of exchanges that stream their response.
	SSE float64
	// MinBody and MaxBody bound request body sizes in bytes; sizes are
	// log-uniform between them (many small prompts, a long tail of large
	// contexts).
	MinBody, MaxBody int
	// Tenants is how many x-tenant-id values the exchanges spread over.
	Tenants int
	// SSEDeltas is how many text deltas a streamed response carries.
	SSEDeltas int
	// ChunkMax bounds the data callbacks an SSE body is read in: each is
	// 1..ChunkMax bytes at a random boundary, unrelated to event boundaries,
	// and becomes one STREAMED response_body message, as Envoy sends one per
	// data callback (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/processing_mode.proto).
	ChunkMax int
	// EventGap, when > 0, makes a slow, token-by-token stream instead: one
	// event per read, with EventGap before each event after the first.
	EventGap time.Duration
}

// DefaultMix is the mix make bench uses.
var DefaultMix = Mix{OpenAI: 0.5, SSE: 0.5, MinBody: 2 << 10, MaxBody: 200 << 10, Tenants: 100, SSEDeltas: 40, ChunkMax: 512}

// Validate reports a Mix that cannot generate traffic.
func (m Mix) Validate() error {
	switch {
	case m.OpenAI < 0 || m.OpenAI > 1 || m.SSE < 0 || m.SSE > 1:
		return fmt.Errorf("load: mix fractions must be within [0, 1]")
	case m.MinBody < 256 || m.MaxBody < m.MinBody:
		return fmt.Errorf("load: body sizes [%d, %d] invalid (min ≥ 256, max ≥ min)", m.MinBody, m.MaxBody)
	case m.Tenants < 1:
		return fmt.Errorf("load: tenants must be ≥ 1")
	case m.SSEDeltas < 1:
		return fmt.Errorf("load: sse deltas must be ≥ 1")
	case m.ChunkMax < 1:
		return fmt.Errorf("load: chunk max must be ≥ 1")
	case m.EventGap < 0:
		return fmt.Errorf("load: negative event gap")
	}
	return nil
}

// Spec is one exchange of the workload.
type Spec struct {
	OpenAI bool
	SSE    bool
	Tenant string
	// User and Key are the caller below its org (team HierarchyTeam): with
	// the tenant they make the four levels of the hierarchy the harness's
	// tokenwarden.yaml configures (TokenwardenConfig).
	User, Key string
	// Lane is the route's lane (route metadata, as Envoy hands it over):
	// one exchange in four is batch work, the rest interactive.
	Lane string
	Body []byte
	// Response is the canned upstream response body; Events are the byte
	// offsets where its SSE events end (for paced delivery).
	Response []byte
	Events   []int
}

// Request builds the downstream request for s (a fresh value: sim may keep
// it for the exchange's lifetime).
func (s *Spec) Request(seq uint64) *sim.Request {
	path, auth := "/v1/messages", sim.Header{Name: "x-api-key", Value: "sk-ant-load-test"}
	if s.OpenAI {
		path, auth = "/v1/chat/completions", sim.Header{Name: "authorization", Value: "Bearer sk-load-test"}
	}
	hs := []sim.Header{
		{Name: "content-type", Value: "application/json"},
		{Name: "content-length", Value: strconv.Itoa(len(s.Body))},
		{Name: "x-tenant-id", Value: s.Tenant},
		{Name: "x-request-id", Value: "load-" + strconv.FormatUint(seq, 10)},
		{Name: "user-agent", Value: "twload/1"},
		auth,
	}
	if !s.OpenAI {
		hs = append(hs, sim.Header{Name: "anthropic-version", Value: "2023-06-01"})
	}
	if s.SSE {
		hs = append(hs, sim.Header{Name: "accept", Value: "text/event-stream"})
	}
	return &sim.Request{Method: "POST", Path: path, Authority: "llm.internal", Headers: hs, Body: s.Body,
		Attributes: map[string]any{gateway.PolicyAttribute: "default", gateway.LaneAttribute: s.Lane},
		// What Envoy's jwt_authn leaves after verifying the caller's token
		// (payload_in_metadata: payload), the identity tokenwarden reads.
		Metadata: map[string]map[string]any{jwtNamespace: {"payload": map[string]any{
			"org_id": s.Tenant, "team": HierarchyTeam, "sub": s.User, "kid": s.Key}}}}
}

// Workload is a fixed, reproducible set of exchanges, generated once so that
// building bodies costs nothing during a run and both targets see exactly
// the same traffic. Exchange i of a run uses Specs[i % len(Specs)].
type Workload struct {
	Mix   Mix
	Specs []Spec
}

// NewWorkload generates n exchanges from mix and seed.
func NewWorkload(mix Mix, seed uint64, n int) (*Workload, error) {
	if err := mix.Validate(); err != nil {
		return nil, err
	}
	if n < 1 {
		return nil, fmt.Errorf("load: workload size %d", n)
	}
	rng := rand.New(rand.NewPCG(seed, 0x7477))
	w := &Workload{Mix: mix, Specs: make([]Spec, n)}
	for i := range w.Specs {
		s := &w.Specs[i]
		s.OpenAI = rng.Float64() < mix.OpenAI
		s.SSE = rng.Float64() < mix.SSE
		s.Tenant = fmt.Sprintf("tenant-%04d", rng.IntN(mix.Tenants))
		// from i, not the rng, so adding the levels left the rest of the
		// workload as it was
		s.User, s.Key = "u"+strconv.Itoa(i%hierarchyUsers), "k"+strconv.Itoa(i%hierarchyUsers)
		s.Lane = "interactive"
		if i%4 == 3 {
			s.Lane = "batch"
		}
		size := logUniform(rng, mix.MinBody, mix.MaxBody)
		var err error
		if s.Body, err = requestBody(rng, s.OpenAI, s.SSE, size); err != nil {
			return nil, err
		}
		inputTokens := int64(len(s.Body) / 4)
		s.Response, s.Events = responseBody(rng, s.OpenAI, s.SSE, mix.SSEDeltas, inputTokens, i)
	}
	return w, nil
}

func logUniform(rng *rand.Rand, lo, hi int) int {
	if hi <= lo {
		return lo
	}
	l, h := math.Log(float64(lo)), math.Log(float64(hi))
	return int(math.Exp(l + rng.Float64()*(h-l)))
}

// words is prose-like filler; the estimator counts bytes and words, so
// realistic text matters more than its meaning.
var words = strings.Fields(`the a of to and in that is for it with as was on be by this are from or
have an they which one you were all we her she there would their will when who him been has more if no
out so said what up its about into than them can only other new some could time these two may then do
first any my now such like our over man me even most made after also did many before must through back
years where much your way well down should because each just those people how too little state good very
make world still own see men work long get here between both life being under never day same another know
while last might us great old year off come since against go came right used take three function return
error value request response token budget limit tenant model stream usage cache input output json {"k": 1}
path "quoted" tab\t newline\n unicode café naïve 東京 emoji-free`)

// filler returns about n bytes of word salad.
func filler(rng *rand.Rand, n int) string {
	var b strings.Builder
	b.Grow(n + 16)
	for b.Len() < n {
		b.WriteString(words[rng.IntN(len(words))])
		b.WriteByte(' ')
	}
	return b.String()
}

type msg struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// requestBody builds a Messages or Chat Completions request of about size
// bytes: a system prompt and a conversation of alternating turns.
func requestBody(rng *rand.Rand, openai, stream bool, size int) ([]byte, error) {
	turns := 1 + 2*rng.IntN(4) // odd: ends with a user turn
	per := max(size/(turns+1), 16)
	system := filler(rng, per)
	var msgs []msg
	if openai {
		msgs = append(msgs, msg{Role: "system", Content: system})
	}
	for t := range turns {
		role := "user"
		if t%2 == 1 {
			role = "assistant"
		}
		msgs = append(msgs, msg{Role: role, Content: filler(rng, per)})
	}
	var body any
	if openai {
		// A stream asks for its usage chunk itself, as the canned answer
		// (responseBody) has one: were it tokenwarden's to force, the
		// client would receive the stream without it, and the floor target
		// would not.
		type streamOptions struct {
			IncludeUsage bool `json:"include_usage"`
		}
		var so *streamOptions
		if stream {
			so = &streamOptions{true}
		}
		body = struct {
			Model         string         `json:"model"`
			Messages      []msg          `json:"messages"`
			MaxTokens     int            `json:"max_tokens"`
			Stream        bool           `json:"stream,omitempty"`
			StreamOptions *streamOptions `json:"stream_options,omitempty"`
		}{"gpt-4o-mini", msgs, 1024, stream, so}
	} else {
		body = struct {
			Model     string `json:"model"`
			MaxTokens int    `json:"max_tokens"`
			System    string `json:"system"`
			Messages  []msg  `json:"messages"`
			Stream    bool   `json:"stream,omitempty"`
		}{"claude-sonnet-4-5", 1024, system, msgs, stream}
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("load: marshal request: %w", err)
	}
	return b, nil
}

// responseBody builds the provider's answer in the shape of the recorded
// Anthropic traffic (the anthropic-sdk-go cassettes the recorded-traffic
// tests read from ../shared/fixtures/anthropic-recorded) and of OpenAI's
// documented chunk format (https://platform.openai.com/docs/api-reference/chat/streaming):
// a JSON message with usage, or an SSE stream whose usage arrives at the end.
func responseBody(rng *rand.Rand, openai, stream bool, deltas int, input int64, i int) ([]byte, []int) {
	output := int64(20 + rng.IntN(500))
	text := func() string { return strings.TrimSpace(filler(rng, 8+rng.IntN(40))) }
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	var b strings.Builder
	var ends []int
	event := func(s string) { b.WriteString(s); ends = append(ends, b.Len()) }
	switch {
	case !openai && !stream:
		fmt.Fprintf(&b, `{"model":"claude-sonnet-4-5-20250929","id":"msg_load%06d","type":"message","role":"assistant","content":[{"type":"text","text":%s}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":%d,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":%d,"service_tier":"standard"}}`,
			i, q(text()), input, output)
		return []byte(b.String()), nil
	case openai && !stream:
		fmt.Fprintf(&b, `{"id":"chatcmpl-load%06d","object":"chat.completion","created":1761840000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":%s,"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_load"}`,
			i, q(text()), input, output, input+output)
		return []byte(b.String()), nil
	case !openai:
		event(fmt.Sprintf("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5-20250929\",\"id\":\"msg_load%06d\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":%d,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"cache_creation\":{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n", i, input))
		event("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n")
		event("event: ping\ndata: {\"type\": \"ping\"}\n\n")
		for range deltas {
			event(fmt.Sprintf("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":%s}}\n\n", q(text())))
		}
		event("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n")
		event(fmt.Sprintf("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":%d,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":%d}}\n\n", input, output))
		event("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	default:
		head := fmt.Sprintf(`{"id":"chatcmpl-load%06d","object":"chat.completion.chunk","created":1761840000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_load"`, i)
		event("data: " + head + `,"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}` + "\n\n")
		for range deltas {
			event("data: " + head + `,"choices":[{"index":0,"delta":{"content":` + q(text()) + `},"logprobs":null,"finish_reason":null}],"usage":null}` + "\n\n")
		}
		event("data: " + head + `,"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}` + "\n\n")
		event(fmt.Sprintf("data: %s,\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n", head, input, output, input+output))
		event("data: [DONE]\n\n")
	}
	return []byte(b.String()), ends
}

// responseHeaders are the provider's headers for s, including the
// rate-limit headers the processor records: limits far above anything the
// harness sends (its open loop can hold thousands of requests and millions
// of tokens in flight), so that the upstream view is read on every answer
// but pacing, which engages only near a limit, never does.
func responseHeaders(s *Spec) []sim.Header {
	ct := "application/json"
	if s.SSE {
		ct = "text/event-stream; charset=utf-8"
	}
	hs := []sim.Header{{Name: "content-type", Value: ct}, {Name: "date", Value: "Thu, 30 Oct 2025 16:17:35 GMT"}}
	if !s.SSE {
		hs = append(hs, sim.Header{Name: "content-length", Value: strconv.Itoa(len(s.Response))})
	}
	if s.OpenAI {
		return append(hs,
			sim.Header{Name: "x-request-id", Value: "req_load"},
			sim.Header{Name: "x-ratelimit-limit-requests", Value: "100000"},
			sim.Header{Name: "x-ratelimit-remaining-requests", Value: "99999"},
			sim.Header{Name: "x-ratelimit-reset-requests", Value: "6ms"},
			sim.Header{Name: "x-ratelimit-limit-tokens", Value: "1000000000"},
			sim.Header{Name: "x-ratelimit-remaining-tokens", Value: "999990000"},
			sim.Header{Name: "x-ratelimit-reset-tokens", Value: "60ms"})
	}
	return append(hs,
		sim.Header{Name: "request-id", Value: "req_load"},
		sim.Header{Name: "anthropic-ratelimit-requests-limit", Value: "100000"},
		sim.Header{Name: "anthropic-ratelimit-requests-remaining", Value: "99999"},
		sim.Header{Name: "anthropic-ratelimit-requests-reset", Value: "2025-10-30T16:17:35Z"},
		sim.Header{Name: "anthropic-ratelimit-input-tokens-limit", Value: "1000000000"},
		sim.Header{Name: "anthropic-ratelimit-input-tokens-remaining", Value: "999999000"},
		sim.Header{Name: "anthropic-ratelimit-input-tokens-reset", Value: "2025-10-30T16:17:36Z"},
		sim.Header{Name: "anthropic-ratelimit-output-tokens-limit", Value: "1000000000"},
		sim.Header{Name: "anthropic-ratelimit-output-tokens-remaining", Value: "1000000000"},
		sim.Header{Name: "anthropic-ratelimit-output-tokens-reset", Value: "2025-10-30T16:17:37Z"})
}

// gateTimeout bounds how long an SSE body waits for its response headers to
// leave the filter; it only fires when a processor keeps an SSE response
// BUFFERED, and such exchanges are counted (Result.GateTimeouts).
const gateTimeout = 2 * time.Second

// upstream is the in-harness provider: it drains the request body and
// answers from memory, so the provider costs the same for every target and
// is never the bottleneck.
//
// An SSE body is held back until the response headers have left the filter
// (open is called when Filter.Do returns): a real provider's first token
// comes well after its headers, and an in-memory body would otherwise arrive
// during the response_headers round trip and become one message
// (ProcessorState::handleCompleteBodyAvailable in
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc),
// which is not what streaming looks like.
func upstream(s *Spec, gate *gate, mix *Mix, seed uint64) sim.Upstream {
	return sim.UpstreamFunc(func(ctx context.Context, r *sim.UpstreamRequest) (*sim.UpstreamResponse, error) {
		if r.Body != nil {
			if _, err := io.Copy(io.Discard, r.Body); err != nil {
				return nil, fmt.Errorf("load: upstream read: %w", err)
			}
		}
		resp := &sim.UpstreamResponse{Status: 200, Headers: responseHeaders(s)}
		if s.SSE {
			resp.Body = &sseBody{ctx: ctx, gate: gate, data: s.Response, ends: s.Events, gap: mix.EventGap,
				chunkMax: mix.ChunkMax, rng: rand.New(rand.NewPCG(seed, 0x535345))}
		} else {
			resp.Body = io.NopCloser(strings.NewReader(string(s.Response)))
		}
		return resp, nil
	})
}

// gate is closed once; waiting on it gives up after gateTimeout.
type gate struct {
	once     sync.Once
	ch       chan struct{}
	timedOut atomic.Bool
}

func newGate() *gate { return &gate{ch: make(chan struct{})} }

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

// sseBody releases an SSE stream after the gate: in reads of 1..chunkMax
// bytes at random boundaries (gap 0), or one event per read with gap before
// each event but the first.
type sseBody struct {
	ctx      context.Context
	gate     *gate
	data     []byte
	ends     []int
	gap      time.Duration
	chunkMax int
	rng      *rand.Rand
	off      int
	next     int
	started  bool
	timer    *time.Timer
}

func (b *sseBody) Read(p []byte) (int, error) {
	if !b.started {
		b.started = true
		t := time.NewTimer(gateTimeout)
		select {
		case <-b.gate.ch:
			t.Stop()
		case <-t.C:
			b.gate.timedOut.Store(true)
		case <-b.ctx.Done():
			t.Stop()
			return 0, b.ctx.Err()
		}
	} else if b.gap > 0 && b.off < len(b.data) {
		if b.timer == nil {
			b.timer = time.NewTimer(b.gap)
		} else {
			b.timer.Reset(b.gap)
		}
		select {
		case <-b.timer.C:
		case <-b.ctx.Done():
			return 0, b.ctx.Err()
		}
	}
	if b.off >= len(b.data) {
		return 0, io.EOF
	}
	end := min(len(b.data), b.off+1+b.rng.IntN(b.chunkMax))
	if b.gap > 0 {
		end = len(b.data)
		for b.next < len(b.ends) && b.ends[b.next] <= b.off {
			b.next++
		}
		if b.next < len(b.ends) {
			end = b.ends[b.next]
		}
	}
	n := copy(p, b.data[b.off:end])
	b.off += n
	return n, nil
}

func (b *sseBody) Close() error {
	if b.timer != nil {
		b.timer.Stop()
	}
	return nil
}
