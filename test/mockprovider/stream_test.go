package mockprovider

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"sigs.k8s.io/yaml"
)

const streamReq = `{"model":"claude-sonnet-4-5","max_tokens":1000,"stream":true,"messages":[{"role":"user","content":"Tell me a story"}]}`

// checkAnthropicStream validates a complete stream against the documented
// sequence and returns the decoded events.
func checkAnthropicStream(t *testing.T, body []byte) []sseEvent {
	t.Helper()
	events, err := decodeSSE(body)
	if err != nil {
		t.Fatalf("decode: %v\n%s", err, body)
	}
	var names []string
	for _, e := range events {
		names = append(names, e.Event)
		if e.Event == "ping" {
			if e.Data != `{"type": "ping"}` {
				t.Errorf("ping data %q", e.Data)
			}
			continue
		}
		if !json.Valid([]byte(e.Data)) {
			t.Fatalf("event %s: invalid JSON %q", e.Event, e.Data)
		}
		if typ := gjson.Get(e.Data, "type").String(); typ != e.Event {
			t.Errorf("event %s carries type %q", e.Event, typ)
		}
	}
	seq := strings.Join(names, " ")
	want := "message_start content_block_start ping "
	if !strings.HasPrefix(seq, want) || !strings.HasSuffix(seq, " content_block_stop message_delta message_stop") {
		t.Errorf("event sequence %s", seq)
	}
	if strings.Count(seq, "content_block_delta") < 1 {
		t.Errorf("no deltas: %s", seq)
	}
	return events
}

func TestAnthropicStream(t *testing.T) {
	s := startMock(t, Options{})
	resp, body, err := post(t, s.URL()+"/v1/messages", streamReq, anthropicHeaders())
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d err %v", resp.StatusCode, err)
	}
	if ct, cc := resp.Header.Get("content-type"), resp.Header.Get("cache-control"); ct != "text/event-stream; charset=utf-8" || cc != "no-cache" {
		t.Errorf("content-type %q cache-control %q", ct, cc)
	}
	checkAnthropicRateHeaders(t, resp.Header)
	events := checkAnthropicStream(t, body)

	start := gjson.Get(events[0].Data, "message.usage")
	if o := start.Get("output_tokens").Int(); o < 1 || o > 2 {
		t.Errorf("message_start output_tokens %d, want a 1–2 placeholder", o)
	}
	if keys([]byte(events[0].Data), "message") != "model,id,type,role,content,stop_reason,stop_sequence,usage" {
		t.Errorf("message_start key order %s", keys([]byte(events[0].Data), "message"))
	}
	var text strings.Builder
	padded := 0
	for _, e := range events {
		if e.Event == "content_block_delta" {
			text.WriteString(gjson.Get(e.Data, "delta.text").String())
		}
		if strings.HasSuffix(e.Data, " }") {
			padded++
		}
	}
	delta := gjson.Get(events[len(events)-2].Data, "usage")
	out := delta.Get("output_tokens").Int()
	if n := int64(len(strings.Fields(text.String()))); n != out || out != naturalOutput([]byte(`"Tell me a story"`)) {
		t.Errorf("streamed %d words, message_delta output_tokens %d", n, out)
	}
	if delta.Get("input_tokens").Int() != start.Get("input_tokens").Int() || !delta.Get("cache_read_input_tokens").Exists() {
		t.Errorf("message_delta usage %s lacks the cumulative input fields", delta.Raw)
	}
	if padded == 0 {
		t.Errorf("no event carries whitespace padding before its final brace")
	}
	led := s.Provider().Ledger()
	if len(led) != 1 || led[0].Cut || !led[0].Complete || !led[0].Stream || led[0].Reported != led[0].Computed ||
		led[0].Reported.OutputTokens != out || len(led[0].Usage) != 2 || string(led[0].Usage[1]) != delta.Raw {
		t.Errorf("ledger %+v, delta usage %s", led, delta.Raw)
	}
}

// TestStreamPaddingDeterministic: the same seed and request sequence yield
// the same bytes; another seed does not.
func TestStreamPaddingDeterministic(t *testing.T) {
	run := func(seed uint64) []byte {
		p := New(Options{Seed: seed})
		rec := newRecordingWriter()
		req := httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(streamReq))
		req.Header = anthropicHeaders()
		p.ServeHTTP(rec, req)
		return rec.body()
	}
	a := run(42)
	if !bytes.Equal(a, run(42)) {
		t.Errorf("two instances with the same seed streamed different bytes")
	}
	if bytes.Equal(a, run(43)) {
		t.Errorf("a different seed streamed identical bytes")
	}
}

func TestStreamWrites(t *testing.T) {
	tests := []struct {
		name  string
		split string
		check func(t *testing.T, writes [][]byte, events int)
	}{
		{"one write per event", "", func(t *testing.T, writes [][]byte, events int) {
			if len(writes) != events {
				t.Errorf("%d writes for %d events", len(writes), events)
			}
			for _, w := range writes {
				if !bytes.HasSuffix(w, []byte("\n\n")) || bytes.Count(w, []byte("\n\n")) != 1 {
					t.Errorf("write is not exactly one event: %q", w)
				}
			}
		}},
		{"random split", "random", func(t *testing.T, writes [][]byte, events int) {
			if len(writes) <= events {
				t.Errorf("random split produced %d writes for %d events", len(writes), events)
			}
		}},
		{"fixed split", "7", func(t *testing.T, writes [][]byte, _ int) {
			for _, w := range writes {
				if len(w) > 7 {
					t.Errorf("write of %d bytes with split 7", len(w))
				}
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := New(Options{})
			rec := newRecordingWriter()
			req := httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(streamReq))
			req.Header = with(anthropicHeaders(), "x-mock-split", tc.split)
			p.ServeHTTP(rec, req)
			events := checkAnthropicStream(t, rec.body())
			tc.check(t, rec.writes, len(events))
		})
	}
}

func TestStreamErrorAfter(t *testing.T) {
	s := startMock(t, Options{})
	for _, n := range []int{0, 1, 4} {
		resp, body, err := post(t, s.URL()+"/v1/messages", streamReq, with(anthropicHeaders(), "x-mock-error-after", itoa(int64(n))))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("status %d err %v", resp.StatusCode, err)
		}
		events, derr := decodeSSE(body)
		if derr != nil || len(events) != n+1 {
			t.Fatalf("after %d: %d events (%v)", n, len(events), derr)
		}
		last := events[n]
		if last.Event != "error" || gjson.Get(last.Data, "error.type").String() != "overloaded_error" {
			t.Errorf("final event %+v", last)
		}
	}
	led := s.Provider().Ledger()
	if len(led) != 3 || !led[0].Cut || led[0].Complete || len(led[0].Usage) != 0 || len(led[1].Usage) != 1 ||
		led[1].Reported.OutputTokens > 2 || led[1].Reported.InputTokens != led[1].Computed.InputTokens {
		t.Errorf("ledger %+v", led)
	}
}

func TestStreamDisconnect(t *testing.T) {
	s := startMock(t, Options{})
	for _, url := range []string{"/v1/messages", "/v1/chat/completions"} {
		body := streamReq
		h := anthropicHeaders()
		if strings.Contains(url, "chat") {
			body, h = oaiStream, openaiHeaders()
		}
		resp, got, err := post(t, s.URL()+url, body, with(h, "x-mock-disconnect-after", "3"))
		if resp.StatusCode != 200 || err == nil {
			t.Errorf("%s: status %d, read error %v; want an aborted body", url, resp.StatusCode, err)
		}
		events, _ := decodeSSE(got)
		if len(events) != 3 {
			t.Errorf("%s: %d events before the disconnect, want 3", url, len(events))
		}
	}
	led := s.Provider().Ledger()
	if len(led) != 2 || !led[0].Cut || !led[1].Cut || led[0].Complete {
		t.Errorf("ledger %+v", led)
	}
}

func TestStreamClientGoneDuringDelay(t *testing.T) {
	s := startMock(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL()+"/v1/messages", strings.NewReader(streamReq))
	req.Header = with(anthropicHeaders(), "x-mock-chunk-delay", "10s")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "event: message_start\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	cancel()
	resp.Body.Close()
	// The handler notices the cancellation inside its delay and records a cut.
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Provider().Ledger()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	led := s.Provider().Ledger()
	if len(led) != 1 || !led[0].Cut || len(led[0].Usage) != 1 {
		t.Errorf("ledger %+v", led)
	}
}

func TestStreamChunkDelayCompletes(t *testing.T) {
	s := startMock(t, Options{})
	_, body, err := post(t, s.URL()+"/v1/messages", streamReq, with(anthropicHeaders(), "x-mock-chunk-delay", "1ms"))
	if err != nil {
		t.Fatal(err)
	}
	checkAnthropicStream(t, body)
}

func TestUsageKnobs(t *testing.T) {
	s := startMock(t, Options{})
	t.Run("no usage json", func(t *testing.T) {
		_, body, _ := post(t, s.URL()+"/v1/messages", helloReq, with(anthropicHeaders(), "x-mock-no-usage", "true"))
		if gjson.GetBytes(body, "usage").Exists() || !gjson.GetBytes(body, "content.0.text").Exists() {
			t.Errorf("body %s", body)
		}
	})
	t.Run("no usage stream", func(t *testing.T) {
		_, body, _ := post(t, s.URL()+"/v1/messages", streamReq, with(anthropicHeaders(), "x-mock-no-usage", "true"))
		for _, e := range checkAnthropicStream(t, body) {
			if gjson.Get(e.Data, "usage").Exists() || gjson.Get(e.Data, "message.usage").Exists() {
				t.Errorf("%s carries usage: %s", e.Event, e.Data)
			}
		}
	})
	t.Run("usage on delta only", func(t *testing.T) {
		_, body, _ := post(t, s.URL()+"/v1/messages", streamReq, with(anthropicHeaders(), "x-mock-usage-on-delta-only", ""))
		events := checkAnthropicStream(t, body)
		start := gjson.Get(events[0].Data, "message.usage")
		if start.Get("input_tokens").Int() != 0 || start.Get("output_tokens").Int() != 0 {
			t.Errorf("message_start usage %s, want zeros", start.Raw)
		}
		if gjson.Get(events[len(events)-2].Data, "usage.input_tokens").Int() == 0 {
			t.Errorf("message_delta lacks the real input count")
		}
	})
	led := s.Provider().Ledger()
	if len(led) != 3 || !led[0].NoUsage || !led[1].NoUsage || led[0].Cut || led[1].Cut || len(led[1].Usage) != 0 ||
		led[2].Reported != led[2].Computed || led[2].Computed.InputTokens == 0 {
		t.Errorf("ledger %+v", led)
	}
}

// TestRecordedShapes compares the mock's stream with a real recording: the
// same event names in the same order pattern, the same key order in
// message_start and message_delta, and padding before the final brace.
func TestRecordedShapes(t *testing.T) {
	dir := fixturesDir(t)
	real := recordedStream(t, dir+"/anthropic-recorded/cassettes/tool_runner_streaming_all.yaml")
	realEvents, err := decodeSSE(real)
	if err != nil {
		t.Fatalf("decode recording: %v", err)
	}
	s := startMock(t, Options{})
	_, body, _ := post(t, s.URL()+"/v1/messages", streamReq, anthropicHeaders())
	mockEvents := checkAnthropicStream(t, body)
	find := func(evs []sseEvent, name string) string {
		for _, e := range evs {
			if e.Event == name {
				return e.Data
			}
		}
		t.Fatalf("no %s event", name)
		return ""
	}
	for _, c := range []struct{ event, path string }{
		{"message_start", "@this"}, {"message_start", "message"}, {"message_start", "message.usage"},
		{"message_delta", "@this"}, {"message_delta", "delta"}, {"message_delta", "usage"},
		{"content_block_start", "@this"}, {"content_block_delta", "@this"},
	} {
		r, m := keys([]byte(find(realEvents, c.event)), c.path), keys([]byte(find(mockEvents, c.event)), c.path)
		if r != m {
			t.Errorf("%s %s keys: recorded %s, mock %s", c.event, c.path, r, m)
		}
	}
	if find(realEvents, "ping") != find(mockEvents, "ping") {
		t.Errorf("ping differs")
	}
}

// TestRecordedJSONAndHeaders compares a non-streaming response with a real
// recording: body key order and the set of rate-limit headers.
func TestRecordedJSONAndHeaders(t *testing.T) {
	c := readFixture(t, fixturesDir(t)+"/anthropic-recorded/cassettes/tool_runner_basic.yaml")
	if len(c.Interactions) == 0 {
		t.Fatal("empty cassette")
	}
	rec := c.Interactions[0].Response
	s := startMock(t, Options{})
	resp, body, _ := post(t, s.URL()+"/v1/messages", helloReq, anthropicHeaders())
	for _, path := range []string{"@this", "usage", "usage.cache_creation"} {
		if r, m := keys([]byte(rec.Body), path), keys(body, path); r != m {
			t.Errorf("%s keys: recorded %s, mock %s", path, r, m)
		}
	}
	for name := range rec.Headers {
		lower := strings.ToLower(name)
		if strings.HasPrefix(lower, "anthropic-") || lower == "request-id" || lower == "content-type" {
			if resp.Header.Get(name) == "" {
				t.Errorf("recorded header %s missing from the mock", name)
			}
		}
	}
}

type cassette struct {
	Interactions []struct {
		Response struct {
			Body    string              `json:"body"`
			Headers map[string][]string `json:"headers"`
		} `json:"response"`
	} `json:"interactions"`
}

func readFixture(t *testing.T, path string) cassette {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read fixture: %v", err)
	}
	var c cassette
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("parse fixture %s: %v", path, err)
	}
	return c
}

// recordedStream pulls the first SSE response body out of a VCR cassette.
func recordedStream(t *testing.T, path string) []byte {
	t.Helper()
	data := readFixture(t, path)
	for _, in := range data.Interactions {
		if strings.HasPrefix(in.Response.Body, "event: ") {
			return []byte(in.Response.Body)
		}
	}
	t.Fatalf("%s: no SSE response", path)
	return nil
}

// BenchmarkAnthropicStream measures one complete streamed reply through the
// handler (no network).
func BenchmarkAnthropicStream(b *testing.B) {
	p := New(Options{})
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/messages", strings.NewReader(streamReq))
		req.Header = with(anthropicHeaders(), "x-mock-output-tokens", "200")
		p.ServeHTTP(newRecordingWriter(), req)
	}
}
