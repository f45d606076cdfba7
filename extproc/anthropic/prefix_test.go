package anthropic

import (
	"strings"
	"testing"
)

func TestPrefixFingerprint(t *testing.T) {
	const (
		tools  = `"tools":[` + toolWeather + `,` + toolTime + `]`
		msgs   = `"messages":[{"role":"user","content":"Weather in Paris?"}]`
		system = `"system":"You are a weather bot. Today is 2026-03-01."`
	)
	base := req(tools, system, msgs)
	same := []struct{ name, body string }{
		{"system as one text block", req(tools, `"system":[{"type":"text","text":"You are a weather bot. Today is 2026-03-01."}]`, msgs)},
		{"markers added", req(`"tools":[`+toolWeather+`,`+toolTime[:len(toolTime)-1]+m1+`}]`, `"system":[{"type":"text","text":"You are a weather bot. Today is 2026-03-01."`+m5+`}]`, msgs)},
		{"another conversation", req(tools, system, `"messages":[{"role":"user","content":"And in Rome?"},{"role":"assistant","content":"Sunny."},{"role":"user","content":"Thanks"}]`)},
		{"another model and key order", `{"messages":[],"system":"You are a weather bot. Today is 2026-03-01.","max_tokens":5,` + tools + `,"model":"claude-haiku-4-5"}`},
		{"whitespace between members", "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":1024,\n  \"tools\": [ " + toolWeather + " ,\n " + toolTime + " ],\n  " + system + ",\n  " + msgs + "}"},
		{"space before a tool's closing brace", req(`"tools":[`+toolWeather[:len(toolWeather)-1]+` }`+`,`+toolTime+`]`, system, msgs)},
		{"top-level cache_control", req(`"cache_control":{"type":"ephemeral"}`, tools, system, msgs)},
	}
	different := []struct{ name, body string }{
		{"timestamp in the system prompt", req(tools, `"system":"You are a weather bot. Today is 2026-03-02."`, msgs)},
		{"a tool description", req(`"tools":[`+toolWeather+`,`+toolTime[:20]+`X`+toolTime[21:]+`]`, system, msgs)},
		{"tool order", req(`"tools":[`+toolTime+`,`+toolWeather+`]`, system, msgs)},
		{"a tool dropped", req(`"tools":[`+toolWeather+`]`, system, msgs)},
		{"system split in two blocks", req(tools, `"system":[{"type":"text","text":"You are a weather bot."},{"type":"text","text":" Today is 2026-03-01."}]`, msgs)},
		{"no system", req(tools, msgs)},
		{"whitespace inside a schema", req(`"tools":[`+strings.Replace(toolWeather, `"properties":{`, `"properties": {`, 1)+`,`+toolTime+`]`, system, msgs)},
	}
	want, ok := PrefixFingerprint([]byte(base))
	if !ok {
		t.Fatal("no fingerprint for a request with tools and system")
	}
	for _, tc := range same {
		got, ok := PrefixFingerprint([]byte(tc.body))
		if !ok || got != want {
			t.Errorf("%s: fingerprint %x/%v, want %x", tc.name, got, ok, want)
		}
	}
	seen := map[uint64]string{want: "base"}
	for _, tc := range different {
		got, ok := PrefixFingerprint([]byte(tc.body))
		if !ok {
			t.Errorf("%s: no fingerprint", tc.name)
		}
		if prev, dup := seen[got]; dup {
			t.Errorf("%s: same fingerprint as %s", tc.name, prev)
		}
		seen[got] = tc.name
	}
	// The same text as a tool list or as a system prompt is not the same prefix.
	a, _ := PrefixFingerprint([]byte(`{"system":[{"type":"text","text":"x"}]}`))
	b, _ := PrefixFingerprint([]byte(`{"tools":[{"type":"text","text":"x"}]}`))
	if a == b {
		t.Error("tools and system with the same bytes collide")
	}
}

func TestPrefixFingerprintNone(t *testing.T) {
	for _, body := range []string{
		req(`"messages":[{"role":"user","content":"hi"}]`),
		req(`"system":""`, `"tools":[]`, `"messages":[]`),
		req(`"system":null`, `"tools":null`, `"messages":[]`),
		req(`"system":[]`, `"messages":[]`),
		`{"system":"x"`,
		`{"system":"x"} trailing`,
		`["system"]`,
		``,
	} {
		if fp, ok := PrefixFingerprint([]byte(body)); ok {
			t.Errorf("%s: fingerprint %x, want none", body, fp)
		}
	}
}

func FuzzPrefixFingerprint(f *testing.F) {
	f.Add([]byte(req(`"tools":[`+toolWeather+`]`, `"system":"S"`, `"messages":[]`)))
	f.Add([]byte(`{"system":[{"type":"text","text":"S","cache_control":{"type":"ephemeral"}}]}`))
	f.Add([]byte(`{"tools":[1,"x",null,{}],"system":{}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		fp, ok := PrefixFingerprint(body)
		if !ok && fp != 0 {
			t.Fatalf("fingerprint %x without ok", fp)
		}
		// The gateway's model rewrite never moves the fingerprint.
		if out, err := SetModel(body, "claude-haiku-4-5"); err == nil {
			if fp2, ok2 := PrefixFingerprint(out); fp2 != fp || ok2 != ok {
				t.Fatalf("SetModel changed the fingerprint: %s", out)
			}
		}
	})
}

func BenchmarkPrefixFingerprint(b *testing.B) {
	body := realisticBody(100 << 10)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, ok := PrefixFingerprint(body); !ok {
			b.Fatal("no fingerprint")
		}
	}
}
