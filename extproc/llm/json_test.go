package llm

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"
)

var jsonSeeds = []string{
	`{}`, `[]`, `""`, `0`, `-0.5e+10`, `true`, `false`, `null`, ` {"a" : [1, 2, {"b": null}] } `,
	`{"mod\u0065l":"x","k":"\ud83d\ude00\n\t\"\\\/"}`, `{"a":1,}`, `[1,]`, `{"a" 1}`, `{"a":1 "b":2}`,
	`[01]`, `[1.]`, `[.5]`, `[1e]`, `[-]`, `["\x"]`, `["\u12"]`, "[\"\x01\"]", `["abc`, `{"a":tru}`,
	`nul`, `[1] [2]`, `{"a":"b"}x`, `[[[[[[[[[[]]]]]]]]]]`, "\"\xff\xfe\"", `"` + string(rune(0x10FFFF)) + `"`,
}

// checkDoc reads a whole document with Skip and reports whether the Reader
// accepted it.
func checkDoc(b []byte) bool {
	var r Reader
	r.Reset(b)
	r.Skip()
	return r.End()
}

func TestReaderValidity(t *testing.T) {
	for _, s := range jsonSeeds {
		if got, want := checkDoc([]byte(s)), json.Valid([]byte(s)); got != want {
			t.Errorf("Reader accepts %q = %v, encoding/json = %v", s, got, want)
		}
	}
}

func TestReaderDepthLimit(t *testing.T) {
	deep := bytes.Repeat([]byte("["), MaxDepth+1)
	deep = append(deep, bytes.Repeat([]byte("]"), MaxDepth+1)...)
	var r Reader
	r.Reset(deep)
	r.Skip()
	var se *SyntaxError
	if !errors.As(r.Err(), &se) || se.Msg != "nesting too deep" {
		t.Fatalf("err = %v, want nesting too deep", r.Err())
	}
	if !checkDoc(deep[1 : len(deep)-1]) {
		t.Errorf("nesting of exactly MaxDepth rejected")
	}
}

func TestNextKeyDecodesEscapes(t *testing.T) {
	var r Reader
	r.Reset([]byte(`{"mod\u0065l":1,"\u00e9t\u00e9":2,"plain":3}`))
	it := r.Object()
	var keys []string
	for k, ok := r.NextKey(&it); ok; k, ok = r.NextKey(&it) {
		keys = append(keys, string(k))
		r.Skip()
	}
	if !r.End() {
		t.Fatal(r.Err())
	}
	want := []string{"model", "été", "plain"}
	if len(keys) != len(want) {
		t.Fatalf("keys = %q, want %q", keys, want)
	}
	for i := range want {
		if keys[i] != want[i] {
			t.Errorf("key %d = %q, want %q", i, keys[i], want[i])
		}
	}
}

func TestIntAndString(t *testing.T) {
	tests := []struct {
		in    string
		v     int64
		isInt bool
	}{
		{"0", 0, true}, {"1024", 1024, true}, {"-5", -5, true},
		{"1.5", 0, false}, {"1e3", 0, false}, {"9223372036854775807", 1<<63 - 1, true},
		{"9223372036854775808", 0, false},
	}
	for _, tc := range tests {
		var r Reader
		r.Reset([]byte(tc.in))
		v, isInt := r.Int()
		if v != tc.v || isInt != tc.isInt || !r.End() {
			t.Errorf("Int(%s) = %d, %v (err %v), want %d, %v", tc.in, v, isInt, r.Err(), tc.v, tc.isInt)
		}
	}
	var r Reader
	r.Reset([]byte(`"a\"b\u00e9\ud83d\ude00"`))
	if s, ok := r.String(); !ok || s != "a\"bé😀" {
		t.Errorf("String = %q, %v", s, ok)
	}
}

// FuzzReader checks the Reader against encoding/json: the same documents
// are valid, a valid string's estimate equals the estimate of its decoded
// text (when it has no \u escapes, whose weights are by code point), and
// DecodedLen equals the decoded length.
func FuzzReader(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := checkDoc(b), json.Valid(b); got != want {
			t.Fatalf("Reader accepts %q = %v, encoding/json = %v", b, got, want)
		}
		var s string
		if t := bytes.TrimSpace(b); len(t) == 0 || t[0] != '"' || !utf8.Valid(b) || json.Unmarshal(b, &s) != nil {
			return
		}
		var r Reader
		r.Reset(b)
		raw, ok := r.RawString()
		if !ok {
			t.Fatalf("RawString rejected valid string %q: %v", b, r.Err())
		}
		if !bytes.Contains(raw, []byte(`\u`)) {
			if got, want := DecodedLen(raw), int64(len(s)); got != want {
				t.Fatalf("DecodedLen(%q) = %d, want %d", raw, got, want)
			}
			var c TokenCounter
			r.Reset(b)
			r.EstimateString(&c)
			if got, want := c.Tokens(), EstimateTokens([]byte(s)); got != want {
				t.Fatalf("EstimateString(%q) = %d, want %d", b, got, want)
			}
		}
	})
}
