package mockprovider

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

var anthropicSeeds = []string{
	helloReq,
	streamReq,
	`{"model":"claude-sonnet-4-5","max_tokens":0,"messages":[{"role":"user","content":[]}]}`,
	`{"model":"m","max_tokens":5,"cache_control":{"type":"ephemeral","ttl":"1h"},"tools":[{"name":"t","input_schema":{},"cache_control":{"type":"ephemeral","ttl":"1h"}}],` +
		`"system":[{"type":"text","text":"s","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"x",` +
		`"content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}]},{"type":"image","source":{"type":"url","url":"u"}}]}]}`,
	`{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"x","signature":"s"},{"type":"tool_use","id":"a","name":"n","input":{"k":[1,2]}}]}]}`,
	`{"model":"m","max_tokens":-1,"messages":null}`,
	`[]`,
}

// FuzzParseAnthropic: no input panics, and for every accepted request the
// cache split sums to the uncached count on a cold and on a warm cache.
func FuzzParseAnthropic(f *testing.F) {
	for _, s := range anthropicSeeds {
		f.Add([]byte(s))
	}
	opts := Options{DefaultMinCache: 1}.withDefaults()
	f.Fuzz(func(t *testing.T, body []byte) {
		fp, err := parseAnthropic(body, true, opts)
		if err != nil {
			return
		}
		total := fp.total()
		if total < 0 || fp.maxTokens < 0 {
			t.Fatalf("total %d maxTokens %d", total, fp.maxTokens)
		}
		c := newPromptCache(16)
		now := time.Unix(1e9, 0)
		for round := range 2 {
			p, err := c.plan(fp, now, opts)
			if err != nil {
				return // a breakpoint error is a valid outcome
			}
			u := p.usage
			if u.input < 0 || u.read < 0 || u.write5m < 0 || u.write1h < 0 || u.input+u.read+u.write5m+u.write1h != total {
				t.Fatalf("round %d: %s does not sum to %d", round, u, total)
			}
			c.commit(p, now)
		}
	})
}

func FuzzParseOpenAI(f *testing.F) {
	for _, s := range []string{oaiHello, oaiStream,
		`{"model":"gpt-5","max_completion_tokens":3,"messages":[{"role":"user","content":[{"type":"text","text":"x"},{"type":"input_audio"}]}]}`,
		`{"model":"m","messages":[{"role":"tool","content":null,"tool_calls":[]}],"tools":[{}]}`,
		`{"model":"m","messages":[{"role":"user","content":7}]}`,
	} {
		f.Add([]byte(s))
	}
	opts := Options{}.withDefaults()
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := parseOpenAI(body, opts)
		if err != nil {
			return
		}
		if p.promptTokens < 3+opts.MessageOverhead || p.model == "" || p.maxTokens == 0 {
			t.Fatalf("accepted request with prompt %d model %q max %d", p.promptTokens, p.model, p.maxTokens)
		}
	})
}

// FuzzKnobs: accepted header values are always in range.
func FuzzKnobs(f *testing.F) {
	f.Add("429", "5", "3", "20ms", "random", "true")
	f.Add("", "", "", "", "", "")
	f.Add("99", "-1", "x", "1h", "0", "maybe")
	f.Fuzz(func(t *testing.T, status, retry, after, delay, split, flag string) {
		h := http.Header{}
		for name, v := range map[string]string{"x-mock-status": status, "x-mock-retry-after": retry, "x-mock-error-after": after,
			"x-mock-disconnect-after": after, "x-mock-chunk-delay": delay, "x-mock-split": split, "x-mock-no-usage": flag} {
			if v != "" {
				h.Set(name, v)
			}
		}
		k, err := parseKnobs(h)
		if err != nil {
			return
		}
		if (k.status != 0 && (k.status < 100 || k.status > 599)) || k.chunkDelay < 0 || k.chunkDelay > maxChunkDelay ||
			k.splitSize < 0 || k.errorAfter < -1 || k.retryAfter < -1 {
			t.Fatalf("out-of-range knobs %+v", k)
		}
	})
}

// FuzzDecodeSSE keeps the tests' own decoder honest: whatever it accepts,
// re-encoding gives back the input byte for byte.
func FuzzDecodeSSE(f *testing.F) {
	f.Add([]byte("event: ping\ndata: {\"type\": \"ping\"}\n\n"))
	f.Add([]byte("data: {}\n\ndata: [DONE]\n\n"))
	f.Add([]byte("event: x\n\n"))
	f.Add([]byte("data: a\ndata: b\n\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		events, err := decodeSSE(body)
		if err != nil {
			return
		}
		if got := encodeSSE(events); !bytes.Equal(got, body) {
			t.Fatalf("round trip %q -> %q", body, got)
		}
	})
}

// FuzzStripCacheControl: the stripped block is valid JSON without a
// cache_control member, and stripping is idempotent.
func FuzzStripCacheControl(f *testing.F) {
	f.Add([]byte(`{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}`))
	f.Add([]byte(`{"type":"tool_result","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}},{"type":"text","text":"b"}]}`))
	f.Add([]byte(`{"cache_control":1,"content":"x"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var obj map[string]json.RawMessage
		if json.Unmarshal(raw, &obj) != nil {
			return
		}
		if _, dup := obj["cache_control"]; dup && bytes.Count(raw, []byte(`"cache_control"`)) > 1 {
			return // duplicate keys: JSON leaves the meaning open
		}
		orig := append([]byte(nil), raw...)
		out := stripCacheControl(raw)
		if !bytes.Equal(raw, orig) {
			t.Fatalf("input modified")
		}
		if !json.Valid(out) || gjson.GetBytes(out, "cache_control").Exists() {
			t.Fatalf("stripped %q -> %q", raw, out)
		}
		if again := stripCacheControl(out); !bytes.Equal(again, out) {
			t.Fatalf("not idempotent: %q -> %q", out, again)
		}
	})
}
