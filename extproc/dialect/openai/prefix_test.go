package openai

import (
	"strings"
	"testing"
)

func TestPrefixFingerprint(t *testing.T) {
	const (
		tool   = `{"type":"function","function":{"name":"get_weather","description":"Weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}`
		sys    = `{"role":"system","content":"You are a weather bot. Today is 2026-03-01."}`
		dev    = `{"role":"developer","content":[{"type":"text","text":"Answer in metric units."}]}`
		user   = `{"role":"user","content":"Paris?"}`
		prefix = `"model":"gpt-5-nano","tools":[` + tool + `],"messages":[` + sys + `,` + dev + `,`
	)
	base := `{` + prefix + user + `]}`
	same := []struct{ name, body string }{
		{"another conversation", `{` + prefix + `{"role":"user","content":"Rome?"},{"role":"assistant","content":"Sunny"},{"role":"user","content":"ok"}]}`},
		{"a later system message", `{` + prefix + user + `,{"role":"system","content":"It is 2026-03-02 now."}]}`},
		{"another model, stream options, key order", `{"stream":true,"stream_options":{"include_usage":true},"messages":[` + sys + `,` + dev + `,` + user + `],"tools":[` + tool + `],"model":"gpt-5"}`},
	}
	different := []struct{ name, body string }{
		{"timestamp in the system message", `{"model":"gpt-5-nano","tools":[` + tool + `],"messages":[` + strings.Replace(sys, "03-01", "03-02", 1) + `,` + dev + `,` + user + `]}`},
		{"developer message dropped", `{"model":"gpt-5-nano","tools":[` + tool + `],"messages":[` + sys + `,` + user + `]}`},
		{"tool changed", `{"model":"gpt-5-nano","tools":[` + strings.Replace(tool, "city", "town", 1) + `],"messages":[` + sys + `,` + dev + `,` + user + `]}`},
		{"no tools", `{"model":"gpt-5-nano","messages":[` + sys + `,` + dev + `,` + user + `]}`},
		{"tools as legacy functions", `{"model":"gpt-5-nano","functions":[` + tool + `],"messages":[` + sys + `,` + dev + `,` + user + `]}`},
		{"system only after a user turn", `{"model":"gpt-5-nano","tools":[` + tool + `],"messages":[` + user + `,` + sys + `,` + dev + `]}`},
	}
	want, ok := PrefixFingerprint([]byte(base))
	if !ok {
		t.Fatal("no fingerprint")
	}
	for _, tc := range same {
		if got, ok := PrefixFingerprint([]byte(tc.body)); !ok || got != want {
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
}

func TestPrefixFingerprintNone(t *testing.T) {
	for _, body := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"system","content":"late"}]}`,
		`{"model":"m","messages":[],"tools":[],"functions":null}`,
		`{"model":"m","messages":null,"tools":null}`,
		`{"model":"m","messages":[{"role":"system","content":"x"}]`,
		`{"model":"m","messages":[{"role":"system","content":"x"}]} x`,
		`[]`,
		``,
	} {
		if fp, ok := PrefixFingerprint([]byte(body)); ok {
			t.Errorf("%s: fingerprint %x, want none", body, fp)
		}
	}
}

func FuzzPrefixFingerprint(f *testing.F) {
	f.Add([]byte(`{"model":"m","tools":[{"type":"function"}],"messages":[{"role":"system","content":"S"},{"role":"user","content":"u"}]}`))
	f.Add([]byte(`{"messages":[{"content":"S","role":"developer"},1,{"role":"system"}],"functions":[{}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		fp, ok := PrefixFingerprint(body)
		if !ok && fp != 0 {
			t.Fatalf("fingerprint %x without ok", fp)
		}
		// The gateway's own rewrites never move the fingerprint.
		if out, err := SetModel(body, "gpt-5"); err == nil {
			if fp2, ok2 := PrefixFingerprint(out); fp2 != fp || ok2 != ok {
				t.Fatalf("SetModel changed the fingerprint: %s", out)
			}
		}
		if out, _, err := ForceStreamUsage(body); err == nil {
			if fp2, ok2 := PrefixFingerprint(out); fp2 != fp || ok2 != ok {
				t.Fatalf("ForceStreamUsage changed the fingerprint: %s", out)
			}
		}
	})
}

func BenchmarkPrefixFingerprint(b *testing.B) {
	body := realisticBody(100 << 10)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		PrefixFingerprint(body)
	}
}
