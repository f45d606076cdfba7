package openai

import (
	"bufio"
	"bytes"
	"cmp"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/accounting"
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
				line := sc.Text()
				if q, ok := strings.CutPrefix(line, "[]byte("); ok && strings.HasSuffix(q, ")") {
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

// editSeeds are request bodies for the edit fuzz targets: the other targets'
// bodies and corpora, every shape of stream_options, prefixes.
func editSeeds(t testing.TB) [][]byte {
	var out [][]byte
	for _, s := range fuzzBodies {
		out = append(out, []byte(s))
	}
	for _, s := range []string{
		`{"model":"m","messages":[],"stream":true}`,
		"{\n  \"model\": \"m\",\n  \"messages\": [],\n  \"stream\": true\n}\n",
		`{"stream":true,"stream_options":null,"model":"m","messages":[]}`,
		`{"stream":true,"stream_options":{ },"model":"m","messages":[]}`,
		`{"stream":true,"stream_options":{"include_obfuscation":false},"model":"m","messages":[]}`,
		`{"stream":true,"stream_options":{"include_usage":false,"x":1},"model":"m","messages":[]}`,
		`{"stream":true,"stream_options":{"include_usage":null},"model":"m","messages":[]}`,
		`{"stream":true,"stream_options":{"include_usage" : true},"model":"m","messages":[]}`,
		`{"stream":true,"stream_options":{"include_usage":true,"include_usage":false},"model":"m","messages":[]}`,
		`{"stream":true,"stream_options":{"include_usage":false,"include_usage":true},"model":"m","messages":[]}`,
		`{"stream":true,"mod\u0065l":"m","messages":[]}`,
		`{"model":"gpt-5-nano","tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"system","content":"S"},{"role":"developer","content":[{"type":"text","text":"D"}]},{"role":"user","content":"u"},{"role":"system","content":"late"}]}`,
		`{"messages":[{"role":"sys\u0074em","content":"S"}],"functions":[{"name":"f"}],"model":"m"}`,
	} {
		out = append(out, []byte(s))
	}
	out = append(out, realisticBody(2<<10))
	return append(out, corpusBodies(t, "FuzzSetModel", "FuzzParseRequest", "FuzzForceStreamUsage", "FuzzPrefixFingerprint", "FuzzEditMatchesMultiPass")...)
}

// FuzzEditMatchesMultiPass holds the single pass to the multi-pass code it
// replaced (refParseRequest, refEdit, PrefixFingerprint): ParseRequest
// accepts and rejects what it did, with the same messages and the same
// estimate, takes the same prefix fingerprint PrefixFingerprint does, and
// Edit + Apply build byte for byte the body SetModel then ForceStreamUsage
// built, with the same report. The convenience editors, on any body, either
// refuse it or agree with the old ones.
func FuzzEditMatchesMultiPass(f *testing.F) {
	for _, b := range editSeeds(f) {
		f.Add(b, "gpt-5-nano")
	}
	f.Add([]byte(`{"model":"a","messages":[]}`), "a")
	f.Add([]byte(`{"model":[],"messages":[]}`), "we\"ird\\<name>\n\u2028\x80")
	f.Fuzz(func(t *testing.T, body []byte, model string) {
		req, err := ParseRequest(body)
		old, oldErr := refParseRequest(body)
		if errText(err) != errText(oldErr) && !readTwoWays(err) {
			t.Fatalf("ParseRequest: %v; before: %v", err, oldErr)
		}
		if err == nil {
			fp, ok := PrefixFingerprint(body)
			if req.PrefixFingerprint != fp || req.HasPrefix != ok {
				t.Fatalf("prefix %x/%v, PrefixFingerprint %x/%v", req.PrefixFingerprint, req.HasPrefix, fp, ok)
			}
			got := req
			got.PrefixFingerprint, got.HasPrefix, got.Index = 0, false, wire.Index{}
			if got != old {
				t.Fatalf("parsed %+v, before %+v", got, old)
			}
			for _, e := range []wire.EditRequest{{}, {Model: model}, {Model: model, Cache: &wire.CacheRequest{TTL: "1h"}}} {
				if sent := cmp.Or(e.Model, req.Model); e.Cache != nil && accounting.ExplicitCacheBreakpoints(sent) {
					// Breakpoints are new edits the old code never made;
					// FuzzInjectBreakpoints holds them to their own rules.
					continue
				}
				var edits wire.Edits
				rep, err := ChatCompletions{}.Edit(body, &req, e, &edits)
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
				if !bytes.Equal(out, want) || rep.StreamUsageForced != wantRep.StreamUsageForced {
					t.Fatalf("Edit %+v:\n got %s (%+v)\nwant %s (%+v)", e, out, rep, want, wantRep)
				}
				if unchanged := &want[0] == &body[0]; unchanged != (edits.Len() == 0) {
					t.Fatalf("Edit %+v: %d edits where the old code changed the body: %v", e, edits.Len(), !unchanged)
				}
			}
		}
		// The convenience editors refuse more (the shapes ParseRequest
		// refuses), but what they take they edit as the old ones did.
		if out, err := SetModel(body, model); err == nil {
			want, wantErr := refSetModel(body, model)
			if wantErr != nil || !bytes.Equal(out, want) {
				t.Fatalf("SetModel: %s; before %s, %v", out, want, wantErr)
			}
		}
		if out, changed, err := ForceStreamUsage(body); err == nil {
			want, wantChanged, wantErr := refForceStreamUsage(body)
			if wantErr != nil || !bytes.Equal(out, want) || changed != wantChanged {
				t.Fatalf("ForceStreamUsage: %s %v; before %s %v %v", out, changed, want, wantChanged, wantErr)
			}
		}
	})
}

// TestParsePrefixFingerprint: the fingerprint ParseRequest takes is the one
// PrefixFingerprint takes in its own pass, on every body the tests know.
func TestParsePrefixFingerprint(t *testing.T) {
	n := 0
	for _, b := range editSeeds(t) {
		req, err := ParseRequest(b)
		if err != nil {
			continue
		}
		fp, ok := PrefixFingerprint(b)
		if req.PrefixFingerprint != fp || req.HasPrefix != ok {
			t.Errorf("%s: parse %x/%v, PrefixFingerprint %x/%v", b, req.PrefixFingerprint, req.HasPrefix, fp, ok)
		}
		if ok {
			n++
		}
	}
	if n < 3 {
		t.Errorf("only %d bodies with a prefix", n)
	}
}

// An Index that no parse filled is refused, not spliced at offset 0.
func TestEditUnparsed(t *testing.T) {
	var edits wire.Edits
	req := wire.Request{Model: "m", Stream: true}
	if _, err := (ChatCompletions{}).Edit([]byte(`{"model":"m","stream":true,"messages":[]}`), &req, wire.EditRequest{}, &edits); err == nil || edits.Len() != 0 {
		t.Fatalf("err %v, %d edits", err, edits.Len())
	}
	if _, err := (ChatCompletions{}).Edit(nil, &req, wire.EditRequest{Model: "n"}, &edits); err == nil {
		t.Fatal("model rewrite without a model span")
	}
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
