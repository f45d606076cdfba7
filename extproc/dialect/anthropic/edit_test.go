package anthropic

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// errText is an error's message, "" for none, so errors compare by what the
// client would read.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return "error: " + err.Error()
}

// corpusBodies returns the first []byte value of every file of the named
// fuzz targets' corpora in testdata/fuzz, so one target is seeded with the
// inputs that once broke another.
func corpusBodies(t testing.TB, targets ...string) [][]byte {
	t.Helper()
	var out [][]byte
	for _, target := range targets {
		files, _ := filepath.Glob(filepath.Join("testdata", "fuzz", target, "*"))
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(bytes.NewReader(raw))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				if q, ok := strings.CutPrefix(sc.Text(), "[]byte("); ok && strings.HasSuffix(q, ")") {
					if b, err := strconv.Unquote(q[:len(q)-1]); err == nil {
						out = append(out, []byte(b))
						break
					}
				}
			}
		}
	}
	return out
}

// cacheBodies are requests that exercise every rule of prompt-cache
// placement: markers everywhere the API counts them, TTL orders, automatic
// caching, blocks that cannot carry, strings, nesting below maxBlockDepth,
// document sources, key orders.
var cacheBodies = []string{
	req(`"tools":[`+toolWeather+`,`+toolTime+`]`, `"system":"You are a weather bot."`, `"messages":[{"role":"user","content":"Weather in Paris?"}]`),
	req(`"tools":[`+toolWeather+`]`, `"system":"S"`, `"messages":[{"role":"user","content":"a"},{"role":"assistant","content":[`+thinking+`]},{"role":"user","content":"c"}]`),
	req(`"cache_control":{"type":"ephemeral","ttl":"1h"}`, `"system":[{"type":"text","text":"S"`+m5+`}]`, `"messages":[{"role":"user","content":[`+toolResult+`,`+image+`]},{"role":"user","content":""}]`),
	req(`"cache_control":{"type":"ephemeral"}`, `"system":"S"`, `"messages":[{"role":"user","content":"a"},{"role":"assistant","content":[`+thinking+`]}]`),
	req(`"tools":[`+toolWeather[:len(toolWeather)-1]+m5+`}]`, `"system":"S"`, `"messages":[{"role":"user","content":"a"},{"role":"assistant","content":[{"type":"text","text":"b"`+m1+`}]},{"role":"user","content":"c"}]`),
	req(`"messages":[{"role":"user","content":[` + image + `,` + document + `,{"type":"text","text":" \n\t"}]},{"role":"assistant","content":"Summary."},{"role":"user","content":"More?"}]`),
	req(`"tools":[`+toolWeather+`,{"name":"rare","description":"Rarely used.","input_schema":{"type":"object"},"defer_loading":true}]`, `"messages":[{"role":"user","content":"a"}]`),
	req(`"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"tool_result","content":[{"type":"tool_result","content":[{"type":"tool_result","content":[{"type":"text","text":"deep"` + m1 + `}]}]}]}]}]},{"role":"assistant","content":"ok"},{"role":"user","content":"x"}]`),
	req(`"messages":[{"role":"user","content":[{"source":{"type":"content","content":[{"type":"text","text":"doc"` + m5 + `}]},"type":"document"},{"source":{"type":"text","media_type":"text/plain","data":"plain"},"type":"image","title":"t"}]},{"role":"user","content":"y"}]`),
	req(`"messages":[{"role":"user","content":[{"type":"text","text":"a"}],"content":"b"},{"role":"user","content":"c"},{"role":"assistant","content":"d"}]`),
	`{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":[{"type":"text","text":"b"` + m5 + `}]},{"role":"user","content":"c"}],"system":"S","tools":[` + toolTime + `],"model":"m"}`,
	`{"model":"m","tools":[{"name":"t","cache_control":null}],"system":[{"type":"text","text":"x","cache_control":{"ttl":"1h"},"cache_control":null}],"messages":[{"role":"us\u0065r","content":[{"type":"text","text":"y","cache_control":5}]},{"role":"user","content":"z"}],"cache_control":{"type":"ephemeral"},"cache_control":{"type":"ephemeral","ttl":"1h"}}`,
	"{\n  \"model\": \"claude-opus-4-5\",\n  \"max_tokens\": 1000,\n  \"system\": \"Caf\\u00e9 \\\"menu\\\" \\/ 1E2\",\n  \"tools\": [ {\"name\": \"x\", \"input_schema\": {\"type\": \"object\", \"maximum\": 10.50}} ],\n  \"messages\": [ {\"role\": \"user\", \"content\": [ {\"type\": \"text\", \"text\": \"\\ud83d\\ude00\" } ]} , {\"role\":\"assistant\",\"content\":\"ok\"}, {\"role\":\"user\",\"content\":\"x\"} ]\n}\n",
}

// editSeeds are request bodies for the edit fuzz targets: the other targets'
// bodies and corpora, the cache rules, realistic and recorded requests.
func editSeeds(t testing.TB) [][]byte {
	var out [][]byte
	for _, s := range append(append([]string(nil), fuzzBodies...), cacheBodies...) {
		out = append(out, []byte(s))
	}
	out = append(out, realisticBody(3<<10))
	if dir, ok := findRecorded(); ok {
		files, _ := filepath.Glob(filepath.Join(dir, "cassettes", "*.yaml"))
		if len(files) > 0 {
			for _, rec := range recordings(t) {
				if strings.Contains(rec.Request.URL, "/messages") && rec.Request.Body != "" {
					out = append(out, []byte(rec.Request.Body))
				}
			}
		}
	}
	return append(out, corpusBodies(t, "FuzzSetModel", "FuzzParseRequest", "FuzzInjectCacheControl", "FuzzEditMatchesMultiPass")...)
}

// findRecorded is recordedDir without the skip, for seeding.
func findRecorded() (string, bool) {
	dir, err := os.Getwd()
	for err == nil {
		p := filepath.Join(dir, "shared", "fixtures", "anthropic-recorded")
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			return p, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", false
}

var fuzzTTLs = [...]string{"", "5m", "1h", "24h"}

// FuzzEditMatchesMultiPass holds the single pass to the multi-pass code it
// replaced (refParseRequest, refEdit, refInjectCacheControl): ParseRequest
// accepts and rejects what it did, with the same messages, the same estimate
// and the same prefix fingerprint, and Edit + Apply build byte for byte the
// body SetModel then InjectCacheControl built, with the same report, whatever
// the TTL and minimum. The convenience editors, on any body, either refuse it
// or agree with the old ones.
func FuzzEditMatchesMultiPass(f *testing.F) {
	for i, b := range editSeeds(f) {
		f.Add(b, "claude-haiku-4-5", uint8(i), uint16(i*37%1500))
	}
	f.Add([]byte(`{"model":[],"messages":[]}`), "we\"ird\\<name>\n\u2028\x80", uint8(2), uint16(0))
	f.Fuzz(func(t *testing.T, body []byte, model string, ttl uint8, minTokens uint16) {
		opts := CacheOptions{TTL: fuzzTTLs[ttl%4], MinTokens: int64(minTokens) - 100}
		req, err := ParseRequest(body)
		old, oldErr := refParseRequest(body)
		if errText(err) != errText(oldErr) && !readTwoWays(err) {
			t.Fatalf("ParseRequest: %v; before: %v", err, oldErr)
		}
		if err == nil {
			got := req
			got.Index = wire.Index{}
			if got != old {
				t.Fatalf("parsed %+v, before %+v", got, old)
			}
			cache := &wire.CacheRequest{TTL: opts.TTL, MinTokens: opts.MinTokens}
			for _, e := range []wire.EditRequest{{}, {Model: model}, {Cache: cache}, {Model: model, Cache: cache}} {
				var edits wire.Edits
				rep, err := Messages{}.Edit(body, &req, e, &edits)
				want, wantRep, wantErr := refEdit(body, &old, e)
				if errText(err) != errText(wantErr) {
					t.Fatalf("Edit %+v: %v; before: %v", e, err, wantErr)
				}
				if err != nil {
					continue
				}
				out, err := wire.Apply(body, &edits)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out, want) || !reflect.DeepEqual(rep, wantRep) {
					t.Fatalf("Edit %+v:\n got %s %+v\nwant %s %+v", e, out, rep, want, wantRep)
				}
				if unchanged := &want[0] == &body[0]; unchanged != (edits.Len() == 0) {
					t.Fatalf("Edit %+v: %d edits where the old code changed the body: %v", e, edits.Len(), !unchanged)
				}
			}
		}
		// The convenience editors refuse more (the shapes ParseRequest
		// refuses), but what they take they edit as the old ones did.
		if out, res, err := InjectCacheControl(body, opts); err == nil {
			want, wantRes, wantErr := refInjectCacheControl(body, opts)
			if wantErr != nil || !bytes.Equal(out, want) || !reflect.DeepEqual(res, wantRes) {
				t.Fatalf("InjectCacheControl: %s %+v; before %s %+v %v", out, res, want, wantRes, wantErr)
			}
		}
		if out, err := SetModel(body, model); err == nil {
			want, wantErr := refSetModel(body, model)
			if wantErr != nil || !bytes.Equal(out, want) {
				t.Fatalf("SetModel: %s; before %s, %v", out, want, wantErr)
			}
		}
	})
}

// readTwoWays reports the refusals added after the multi-pass code: a body
// whose governed fields a provider could read differently from tokenwarden
// (a case-folded key, a duplicate include_usage) or a model name that cannot
// go into a header. The old code accepted those; the oracles cannot judge
// them, and TestOneReading in wire holds them to encoding/json instead.
func readTwoWays(err error) bool {
	msg := errText(err)
	for _, s := range []string{"differs from", "include_usage: duplicate key", "model: holds", "model: not valid UTF-8", "model: longer than"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
