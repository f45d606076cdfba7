package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
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

// walkSkip consumes one value the way a caller walks a document, with
// Object, NextKey, Array, NextElem and recursion: the definition Skip's
// single loop must agree with, span and error alike.
func walkSkip(r *Reader) (start, end int) {
	k := r.Peek()
	start = r.pos
	switch k {
	case KindObject:
		it := r.Object()
		for _, ok := r.NextKey(&it); ok; _, ok = r.NextKey(&it) {
			walkSkip(r)
		}
	case KindArray:
		it := r.Array()
		for r.NextElem(&it) {
			walkSkip(r)
		}
	case KindString:
		r.RawString()
	case KindNumber:
		r.Int()
	case KindBool:
		r.Bool()
	case KindNull:
		r.Null()
	}
	return start, r.pos
}

// checkSkip compares Skip with walkSkip on b, from the top and from inside
// an enclosing object (so the depth limit counts from a nonzero depth).
func checkSkip(t *testing.T, b []byte) {
	t.Helper()
	for _, prefix := range []string{"", `{"k":`} {
		doc := append([]byte(prefix), b...)
		var got, want Reader
		for _, r := range []*Reader{&got, &want} {
			r.Reset(doc)
			if prefix != "" {
				it := r.Object()
				r.NextKey(&it)
			}
		}
		gs, ge := got.Skip()
		ws, we := walkSkip(&want)
		if gs != ws || ge != we || got.depth != want.depth && want.err == nil || fmt.Sprint(got.err) != fmt.Sprint(want.err) {
			t.Fatalf("Skip(%q) = [%d,%d) depth %d err %v; walk = [%d,%d) depth %d err %v",
				doc, gs, ge, got.depth, got.err, ws, we, want.depth, want.err)
		}
	}
}

var skipSeeds = []string{
	`{"a":{"b":[1,{"c":"d"}],"e":[]},"f":{}}`, `[ 1 , 2 ]`, "{\n\t\"a\" :\r 1 }", `[1 2]`, `{"a":1 "b"}`,
	`{"a":1,"b"`, `{"a":1,`, `{"a":1,}`, `[1,`, `[`, `{`, `{"a"`, `{"a":`, `{1:2}`, `[tru]`, `[nul]`,
	`[fals]`, `[-]`, `[1.e5]`, `[1e+]`, `[0123]`, `{"a":"\u00zz"}`, `["\ud83d\ude00", "x\"y"]`, `[}`, `{]`,
	`[[[]]`, `[{"a":[{"b":{}}]}]`, `[1,2,3,[4,5,[6]]]`, `{"a":[1,{"b":2},3],"c":{"d":[]}}  `,
}

func TestSkipMatchesWalk(t *testing.T) {
	deep := strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth)
	objs := strings.Repeat(`{"a":`, MaxDepth-1) + "{}" + strings.Repeat("}", MaxDepth-1)
	for _, s := range append(append(skipSeeds, jsonSeeds...), deep, deep[1:len(deep)-1], objs, "["+objs+"]") {
		checkSkip(t, []byte(s))
	}
}

// FuzzSkip holds Skip's loop to the walk it replaces.
func FuzzSkip(f *testing.F) {
	for _, s := range append(skipSeeds, jsonSeeds...) {
		f.Add([]byte(s))
	}
	f.Fuzz(checkSkip)
}
