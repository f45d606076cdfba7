package protocol

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter/redistest"
	"github.com/tokenwarden/tokenwarden/test/internal/procs"
)

// config: every limit dimension and a day budget; one request in flight per
// tenant, so a lease left behind shows as a 429 on the tenant's next request.
const config = `
store: {redis: "redis://%s/0", timeout: 2s, on_failure: closed}
identity:
  from:
    - header: x-tenant-id   # the test plays the mesh, which sets it
      trusted: true
    - api_key_of: x-api-key
  unknown: default:anonymous
  unconfigured: own
policies:
  default:
    limits: {requests_per_minute: 600, tokens_per_minute: 1000000, concurrent: 1}
    output_reservation: 1024
    budgets: [{window: day, usd: 100, timezone: UTC}]
`

// serveProc is one `tokenwarden serve` process.
type serveProc struct {
	cmd         *exec.Cmd
	grpc, admin string
	done        chan struct{}
	logs        *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startServe(t *testing.T, cfg string) *serveProc {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokenwarden.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &serveProc{grpc: procs.FreeAddr(t), admin: procs.FreeAddr(t), done: make(chan struct{}), logs: &lockedBuffer{}}
	p.cmd = exec.Command(procs.Binary(t), "serve", "--config", path, "--grpc-addr", p.grpc, "--admin-addr", p.admin,
		"--log-level", "warn", "--drain-timeout", "1s")
	p.cmd.Stdout, p.cmd.Stderr = io.Discard, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("serve's log:\n%s", p.logs.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if code, _, err := p.get("/healthz"); err == nil && code == 200 {
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("tokenwarden serve exited at start: %v\n%s", p.cmd.ProcessState, p.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("tokenwarden serve did not come up\n%s", p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *serveProc) get(path string) (int, string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + p.admin + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metric reads one series from /metrics, written as in the exposition
// format (name{labels}); -1 when it is absent.
func (p *serveProc) metric(t *testing.T, series string) float64 {
	t.Helper()
	code, body, err := p.get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	for line := range strings.Lines(body) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

// ledger is what Redis holds, per tenant: live leases and reservations (the
// pending zset tw:{tenant}:p) and budget windows (tw:{tenant}:b:<window>:<start>).
type ledger struct {
	keys     map[string][]string // tenant → every key it has
	pending  map[string]int64    // tenant → ZCARD of its p
	spent    map[string]int64    // tenant → spent, summed over its windows
	reserved map[string]int64
}

func readLedger(t *testing.T, rdb *redis.Client) ledger {
	t.Helper()
	ctx := context.Background()
	l := ledger{keys: map[string][]string{}, pending: map[string]int64{}, spent: map[string]int64{}, reserved: map[string]int64{}}
	iter := rdb.Scan(ctx, 0, "tw:*", 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		open, close := strings.Index(key, "{"), strings.Index(key, "}:")
		if open < 0 || close < open {
			t.Fatalf("key %q is outside the schema tw:{tenant}:…", key)
		}
		tenant, rest := key[open+1:close], key[close+2:]
		l.keys[tenant] = append(l.keys[tenant], key)
		switch {
		case rest == "p":
			n, err := rdb.ZCard(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			l.pending[tenant] += n
		case strings.HasPrefix(rest, "b:"):
			v, err := rdb.HMGet(ctx, key, "spent", "reserved").Result()
			if err != nil {
				t.Fatal(err)
			}
			l.spent[tenant] += asInt(t, key, v[0])
			l.reserved[tenant] += asInt(t, key, v[1])
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return l
}

func asInt(t *testing.T, key string, v any) int64 {
	t.Helper()
	if v == nil {
		return 0
	}
	n, err := strconv.ParseInt(fmt.Sprint(v), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return n
}

// open reports what is still held: leases or reservations, by tenant.
func (l ledger) open() []string {
	var out []string
	for tn, n := range l.pending {
		if n != 0 {
			out = append(out, fmt.Sprintf("%s: %d pending", tn, n))
		}
	}
	for tn, n := range l.reserved {
		if n != 0 {
			out = append(out, fmt.Sprintf("%s: %d reserved", tn, n))
		}
	}
	return out
}

// step is one message and what must come back: the answer's oneof (with
// the HTTP status of an immediate_response), or the gRPC error that ends
// the stream, with a word of its message.
type step struct {
	send   *extprocv3.ProcessingRequest
	want   string
	status int
	code   codes.Code
	msg    string
	check  func(t *testing.T, r *extprocv3.ProcessingResponse)
}

const (
	kReqHeaders  = "request_headers"
	kReqBody     = "request_body"
	kReqTrailers = "request_trailers"
	kRspHeaders  = "response_headers"
	kRspBody     = "response_body"
	kRspTrailers = "response_trailers"
	kImmediate   = "immediate_response"
)

func answered(kind string, m *extprocv3.ProcessingRequest, check ...func(*testing.T, *extprocv3.ProcessingResponse)) step {
	s := step{send: m, want: kind}
	if len(check) > 0 {
		s.check = check[0]
	}
	return s
}

func refusedWith(m *extprocv3.ProcessingRequest, code codes.Code, msg string) step {
	return step{send: m, code: code, msg: msg}
}

// ending is how the client ends a stream after its steps; Envoy half-closes
// and resets (its default close), or only half-closes (graceful close), and
// a client or upstream reset cancels
// (https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/ext_proc_filter).
type ending uint8

const (
	byServer     ending = iota // the server ended the stream with an error
	halfClose                  // CloseSend, then the server's OK
	reset                      // cancel only
	envoyDefault               // CloseSend, then cancel at once
)

type protoCase struct {
	name   string
	id     identity
	steps  []step
	end    ending
	lo, hi int64 // the tenant's spend afterwards, nano-USD; 0, 0: nothing written at all
}

func (c protoCase) tenant() string {
	if c.id.tenantID != "" {
		return c.id.tenantID
	}
	return policy.Fingerprint(c.id.apiKey)
}

func setHeader(c *extprocv3.CommonResponse, name string) (string, bool) {
	for _, h := range c.GetHeaderMutation().GetSetHeaders() {
		if h.GetHeader().GetKey() == name {
			return string(h.GetHeader().GetRawValue()), true
		}
	}
	return "", false
}

// admitted: the body's answer names the resolved model, which tokenwarden
// sets only on a request it admitted.
func admitted(t *testing.T, r *extprocv3.ProcessingResponse) {
	t.Helper()
	if m, ok := setHeader(r.GetRequestBody().GetResponse(), contract.ModelHeader); !ok || m != "claude-sonnet-4-5" {
		t.Errorf("body answer %v does not set %s: not admitted", r, contract.ModelHeader)
	}
}

// unchanged: an empty answer, "continue as it is", without metadata.
func unchanged(t *testing.T, r *extprocv3.ProcessingResponse) {
	t.Helper()
	var c *extprocv3.CommonResponse
	switch {
	case r.GetRequestBody() != nil:
		c = r.GetRequestBody().GetResponse()
	case r.GetResponseBody() != nil:
		c = r.GetResponseBody().GetResponse()
	case r.GetResponseHeaders() != nil:
		c = r.GetResponseHeaders().GetResponse()
	}
	if c != nil || r.GetModeOverride() != nil || r.GetDynamicMetadata() != nil {
		t.Errorf("answer %v, want it unchanged", r)
	}
}

func cleared(t *testing.T, r *extprocv3.ProcessingResponse) {
	t.Helper()
	if !r.GetRequestBody().GetResponse().GetBodyMutation().GetClearBody() {
		t.Errorf("chunk answer %v, want clear_body", r)
	}
}

// metered: the final answer carries the access-log metadata of a measured
// request at this cost.
func metered(cost int64) func(*testing.T, *extprocv3.ProcessingResponse) {
	return func(t *testing.T, r *extprocv3.ProcessingResponse) {
		t.Helper()
		f := r.GetDynamicMetadata().GetFields()[contract.MetadataNamespace].GetStructValue().GetFields()
		if f["usage_source"].GetStringValue() != "measured" || int64(f["cost_nano_usd"].GetNumberValue()) != cost {
			t.Errorf("final answer's metadata %v, want usage_source measured and cost_nano_usd %d", r.GetDynamicMetadata(), cost)
		}
	}
}

func streamedSSE(t *testing.T, r *extprocv3.ProcessingResponse) {
	t.Helper()
	if r.GetModeOverride().GetResponseBodyMode() != filterv3.ProcessingMode_STREAMED {
		t.Errorf("SSE response_headers answer %v, want mode_override STREAMED", r)
	}
}

func cases(t *testing.T) []protoCase {
	est := inputEstimate(t, messagesBody)
	rq := func(tn string) *extprocv3.ProcessingRequest {
		return requestHeaders(identity{tenantID: tn}, filterv3.ProcessingMode_BUFFERED, messagesBody)
	}
	streamed := func(tn string) *extprocv3.ProcessingRequest {
		return requestHeaders(identity{tenantID: tn}, filterv3.ProcessingMode_STREAMED, messagesBody)
	}
	body := requestBody(messagesBody, true)
	json200 := responseHeaders(200, "application/json")
	half := len(messagesBody) / 2
	chunks := sseChunks(41, 530, 531, 800)
	const notFirst = "must start with request_headers"
	return []protoCase{
		// Refused: a governed stream starts with request headers, once.
		{name: "body before headers (request_header_mode SKIP)", id: identity{tenantID: "p01"}, end: byServer, steps: []step{
			refusedWith(firstBody(messagesBody), codes.FailedPrecondition, notFirst),
		}},
		{name: "response headers first", id: identity{tenantID: "p02"}, end: byServer, steps: []step{
			refusedWith(json200, codes.FailedPrecondition, notFirst),
		}},
		{name: "response body first", id: identity{tenantID: "p03"}, end: byServer, steps: []step{
			refusedWith(responseBody(jsonResponse, true), codes.FailedPrecondition, notFirst),
		}},
		{name: "response trailers first", id: identity{tenantID: "p04"}, end: byServer, steps: []step{
			refusedWith(responseTrailers(), codes.FailedPrecondition, notFirst),
		}},
		{name: "request trailers first", id: identity{tenantID: "p05"}, end: byServer, steps: []step{
			refusedWith(requestTrailers(), codes.FailedPrecondition, notFirst),
		}},
		{name: "request headers twice", id: identity{tenantID: "p06"}, end: byServer, steps: []step{
			answered(kReqHeaders, rq("p06")),
			refusedWith(rq("p06"), codes.FailedPrecondition, "request_headers received twice"),
		}},
		{name: "no oneof", id: identity{tenantID: "p07"}, end: byServer, steps: []step{
			refusedWith(&extprocv3.ProcessingRequest{}, codes.InvalidArgument, "carries no message"),
		}},
		// A refusal after admission still ends the reservation (at its estimate).
		{name: "no oneof after admission", id: identity{tenantID: "p08"}, end: byServer, lo: est, hi: est, steps: []step{
			answered(kReqHeaders, rq("p08")),
			answered(kReqBody, body, admitted),
			refusedWith(&extprocv3.ProcessingRequest{}, codes.InvalidArgument, "carries no message"),
		}},

		// Trailers.
		{name: "request trailers after a BUFFERED body", id: identity{tenantID: "p09"}, end: envoyDefault, lo: jsonCost, hi: jsonCost, steps: []step{
			answered(kReqHeaders, rq("p09")),
			answered(kReqBody, body, admitted),
			answered(kReqTrailers, requestTrailers()),
			answered(kRspHeaders, json200),
			answered(kRspBody, responseBody(jsonResponse, true), metered(jsonCost)),
		}},
		// BUFFERED with request trailers: Envoy sends the whole body at
		// trailer time without end_of_stream
		// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/processing_mode.proto).
		{name: "BUFFERED body without end_of_stream, then request trailers", id: identity{tenantID: "p10"}, end: envoyDefault, lo: jsonCost, hi: jsonCost, steps: []step{
			answered(kReqHeaders, rq("p10")),
			answered(kReqBody, requestBody(messagesBody, false), admitted),
			answered(kReqTrailers, requestTrailers()),
			answered(kRspHeaders, json200),
			answered(kRspBody, responseBody(jsonResponse, true), metered(jsonCost)),
		}},
		// The filter does not honour the BUFFERED override tokenwarden asks
		// for: the chunks were held back (cleared) and a trailers answer
		// cannot carry a body, so the request cannot go on as sent.
		{name: "STREAMED chunks then trailers", id: identity{tenantID: "p11"}, end: envoyDefault, steps: []step{
			answered(kReqHeaders, streamed("p11"), func(t *testing.T, r *extprocv3.ProcessingResponse) {
				if r.GetModeOverride().GetRequestBodyMode() != filterv3.ProcessingMode_BUFFERED {
					t.Errorf("answer %v, want mode_override request_body_mode BUFFERED", r)
				}
			}),
			answered(kReqBody, requestBody(messagesBody[:half], false), cleared),
			answered(kReqBody, requestBody(messagesBody[half:], false), cleared),
			{send: requestTrailers(), want: kImmediate, status: 500, msg: `"type":"api_error"`},
		}},
		{name: "response trailers end the response", id: identity{tenantID: "p12"}, end: envoyDefault, lo: jsonCost, hi: jsonCost, steps: []step{
			answered(kReqHeaders, rq("p12")),
			answered(kReqBody, body, admitted),
			answered(kRspHeaders, json200),
			answered(kRspBody, responseBody(jsonResponse[:60], false), unchanged),
			answered(kRspBody, responseBody(jsonResponse[60:], false), unchanged),
			answered(kRspTrailers, responseTrailers(), metered(jsonCost)),
		}},
		// The upstream answered before the request body was complete: there
		// is nothing to admit, and every later message goes on unchanged.
		{name: "response headers while the request body streams", id: identity{tenantID: "p13"}, end: envoyDefault, steps: []step{
			answered(kReqHeaders, streamed("p13")),
			answered(kReqBody, requestBody(messagesBody[:half], false), cleared),
			answered(kRspHeaders, responseHeaders(408, "application/json"), unchanged),
			answered(kRspBody, responseBody(`{"type":"error","error":{"type":"timeout_error","message":"Request timed out."}}`, true), unchanged),
			answered(kReqBody, requestBody(messagesBody[half:], true), unchanged),
		}},

		// The same with response_header_mode SKIP: the response's body is the
		// first sign of it.
		{name: "response body while the request body streams", id: identity{tenantID: "p23"}, end: envoyDefault, steps: []step{
			answered(kReqHeaders, streamed("p23")),
			answered(kReqBody, requestBody(messagesBody[:half], false), cleared),
			answered(kRspBody, responseBody(`{"type":"error","error":{"type":"timeout_error","message":"Request timed out."}}`, true), unchanged),
			answered(kReqBody, requestBody(messagesBody[half:], true), unchanged),
		}},

		// Repeats.
		{name: "final request body twice", id: identity{tenantID: "p14"}, end: envoyDefault, lo: jsonCost, hi: jsonCost, steps: []step{
			answered(kReqHeaders, rq("p14")),
			answered(kReqBody, body, admitted),
			answered(kReqBody, body, unchanged),
			answered(kRspHeaders, json200),
			answered(kRspBody, responseBody(jsonResponse, true), metered(jsonCost)),
		}},
		{name: "response body end twice", id: identity{tenantID: "p15"}, end: envoyDefault, lo: jsonCost, hi: jsonCost, steps: []step{
			answered(kReqHeaders, rq("p15")),
			answered(kReqBody, body, admitted),
			answered(kRspHeaders, json200),
			answered(kRspBody, responseBody(jsonResponse, true), metered(jsonCost)),
			answered(kRspBody, responseBody("", true), unchanged),
		}},

		// Streams that end early, as Envoy ends them.
		{name: "ends after request headers", id: identity{tenantID: "p16"}, end: envoyDefault, steps: []step{
			answered(kReqHeaders, rq("p16")),
		}},
		// Admitted and never answered upstream (Envoy's own local reply is not
		// sent to the processor): charged the input estimate.
		{name: "ends after the request body (half-close)", id: identity{tenantID: "p17"}, end: halfClose, lo: est, hi: est, steps: []step{
			answered(kReqHeaders, rq("p17")), answered(kReqBody, body, admitted),
		}},
		{name: "ends after the request body (reset)", id: identity{tenantID: "p18"}, end: reset, lo: est, hi: est, steps: []step{
			answered(kReqHeaders, rq("p18")), answered(kReqBody, body, admitted),
		}},
		{name: "ends after response headers", id: identity{tenantID: "p19"}, end: envoyDefault, lo: est, hi: est, steps: []step{
			answered(kReqHeaders, rq("p19")), answered(kReqBody, body, admitted), answered(kRspHeaders, json200),
		}},
		// message_start reported 2000 input tokens: the charge starts from
		// there (not the request's estimate) plus the output streamed so far,
		// at most max_tokens.
		{name: "ends mid SSE body", id: identity{tenantID: "p20"}, end: reset, lo: 2000*inNano + outNano, hi: 2000*inNano + 64*outNano, steps: []step{
			answered(kReqHeaders, rq("p20")), answered(kReqBody, requestBody(streamBody, true), admitted),
			answered(kRspHeaders, responseHeaders(200, "text/event-stream"), streamedSSE),
			answered(kRspBody, responseBody(chunks[0], false), unchanged),
			answered(kRspBody, responseBody(chunks[1], false), unchanged),
			answered(kRspBody, responseBody(chunks[2], false), unchanged),
		}},
		{name: "ends after the end", id: identity{tenantID: "p21"}, end: envoyDefault, lo: sseCost, hi: sseCost, steps: []step{
			answered(kReqHeaders, rq("p21")), answered(kReqBody, requestBody(streamBody, true), admitted),
			answered(kRspHeaders, responseHeaders(200, "text/event-stream"), streamedSSE),
			answered(kRspBody, responseBody(chunks[0], false)), answered(kRspBody, responseBody(chunks[1], false)),
			answered(kRspBody, responseBody(chunks[2], false)), answered(kRspBody, responseBody(chunks[3], false)),
			answered(kRspBody, responseBody(chunks[4], false)),
			answered(kRspBody, responseBody("", true), metered(sseCost)),
		}},
		// Only an API key: the tenant is its fingerprint, never the key.
		{name: "tenant from the API key", id: identity{apiKey: "sk-ant-api03-only-a-key"}, end: halfClose, lo: jsonCost, hi: jsonCost, steps: []step{
			answered(kReqHeaders, requestHeaders(identity{apiKey: "sk-ant-api03-only-a-key"}, filterv3.ProcessingMode_BUFFERED, messagesBody)),
			answered(kReqBody, body, admitted),
			answered(kRspHeaders, json200),
			answered(kRspBody, responseBody(jsonResponse, true), metered(jsonCost)),
		}},
	}
}

func inputEstimate(t *testing.T, body string) int64 {
	t.Helper()
	r, err := anthropic.ParseRequest([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return r.InputTokens * inNano
}

// run plays one case on its own stream.
func run(t *testing.T, client extprocv3.ExternalProcessorClient, c protoCase) (refused bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range c.steps {
		// Send reports io.EOF once the server has ended the stream; Recv then
		// returns the status it ended with.
		if err := stream.Send(st.send); err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("step %d: send: %v", i, err)
		}
		resp, err := stream.Recv()
		if st.want == "" {
			if status.Code(err) != st.code || !strings.Contains(status.Convert(err).Message(), st.msg) {
				t.Fatalf("step %d (%s): %v %v, want %v naming %q", i, kindOf(st.send), resp, err, st.code, st.msg)
			}
			refused = true
			continue
		}
		if err != nil {
			t.Fatalf("step %d (%s): %v, want %s", i, kindOf(st.send), err, st.want)
		}
		if got := kindOf(resp); got != st.want {
			t.Fatalf("step %d (%s): answered %s %v, want %s", i, kindOf(st.send), got, resp, st.want)
		}
		if ir := resp.GetImmediateResponse(); ir != nil {
			if int(ir.GetStatus().GetCode()) != st.status || !bytes.Contains(ir.GetBody(), []byte(st.msg)) {
				t.Fatalf("step %d: immediate %d %s, want %d with %s", i, ir.GetStatus().GetCode(), ir.GetBody(), st.status, st.msg)
			}
		}
		if st.check != nil {
			st.check(t, resp)
		}
	}
	switch c.end {
	case halfClose:
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if resp, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after CloseSend: %v %v, want the server to end the stream with OK", resp, err)
		}
	case envoyDefault:
		_ = stream.CloseSend()
	}
	return refused // the deferred cancel resets whatever is still open
}

// TestEveryMessageOrder plays every case against one real serve process and
// Redis, then checks the process is up, counted each refusal, and left no
// lease or open reservation behind, having charged each admitted tenant
// what its case says.
func TestEveryMessageOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts processes")
	}
	rs := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	t.Cleanup(func() { rdb.Close() })
	p := startServe(t, fmt.Sprintf(config, rs.Addr()))
	conn, err := grpc.NewClient(p.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := extprocv3.NewExternalProcessorClient(conn)

	all := cases(t)
	refusals := 0
	for _, c := range all {
		ok := t.Run(c.name, func(t *testing.T) {
			if run(t, client, c) {
				refusals++
			}
		})
		if !ok {
			t.FailNow()
		}
	}

	// Settles run after the last answer (or when the stream ends), so they
	// may still be under way: poll, boundedly.
	var l ledger
	deadline := time.Now().Add(10 * time.Second)
	for {
		l = readLedger(t, rdb)
		if len(l.open()) == 0 && p.metric(t, "tokenwarden_active_streams") == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still held after every stream ended: %v; active streams %v", l.open(), p.metric(t, "tokenwarden_active_streams"))
		}
		time.Sleep(10 * time.Millisecond)
	}

	if code, _, err := p.get("/healthz"); err != nil || code != 200 {
		t.Fatalf("/healthz after every case: %d %v", code, err)
	}
	select {
	case <-p.done:
		t.Fatalf("tokenwarden serve exited: %v", p.cmd.ProcessState)
	default:
	}
	if got := p.metric(t, `tokenwarden_stream_errors_total{reason="protocol"}`); got != float64(refusals) {
		t.Errorf(`tokenwarden_stream_errors_total{reason="protocol"} = %v, want %d (the refused streams)`, got, refusals)
	}
	if got := p.metric(t, `tokenwarden_stream_errors_total{reason="panic"}`); got != 0 {
		t.Errorf(`tokenwarden_stream_errors_total{reason="panic"} = %v`, got)
	}
	for _, c := range all {
		tn := c.tenant()
		switch {
		case c.hi == 0 && len(l.keys[tn]) != 0:
			t.Errorf("%s: tenant %s was never admitted but has keys %v", c.name, tn, l.keys[tn])
		case c.hi != 0 && (l.spent[tn] < c.lo || l.spent[tn] > c.hi):
			t.Errorf("%s: tenant %s spent %d nano-USD, want [%d, %d]", c.name, tn, l.spent[tn], c.lo, c.hi)
		}
	}

	// With one request in flight allowed per tenant, each admitted tenant's
	// next request is admitted: no stream kept its slot.
	for _, c := range all {
		if c.hi == 0 {
			continue
		}
		t.Run("next request of "+c.tenant(), func(t *testing.T) {
			run(t, client, protoCase{id: c.id, end: halfClose, steps: []step{
				answered(kReqHeaders, requestHeaders(c.id, filterv3.ProcessingMode_BUFFERED, messagesBody)),
				answered(kReqBody, requestBody(messagesBody, true), admitted),
				answered(kRspHeaders, responseHeaders(200, "application/json")),
				answered(kRspBody, responseBody(jsonResponse, true), metered(jsonCost)),
			}})
		})
	}
}
