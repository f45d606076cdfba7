package wire

import (
	"bytes"
	"testing"

	"github.com/tidwall/gjson"
)

// FuzzValueMatchesGJSON holds Lookup and Value to the gjson calls the
// response parsers made before them: the same verdict on validity (but for
// nesting beyond MaxDepth, which only gjson accepts), the first member of a
// duplicated key, and Result.Int and Result.String's conversions of any
// value.
func FuzzValueMatchesGJSON(f *testing.F) {
	for _, v := range []string{
		`12`, `-0`, `1.5`, `1e3`, `-1E-2`, `1e400`, `-1e400`, `9007199254740993`, `99999999999999999999`, `-9223372036854775809`, `123456789012345`, `1234567890123456`,
		`"12"`, `"-12"`, `"1e2"`, `" 1"`, `"0x10"`, `"inf"`, `"NaN"`, `"1_000"`, `"9999999999999999999999"`, `"\u0031\u0032"`,
		`"caf\u00e9 \ud83d\ude00"`, `"\ud800\u0041"`, `"\udc00\udc00x"`, `"\ud800"`, `"a\"b\\c\/d\b\f\n\r\t"`,
		`true`, `false`, `null`, `{}`, `{"a":[1,{"b":null}]}`, `[1,"x"]`, ` 7 `,
	} {
		f.Add([]byte(v))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		if bytes.Count(v, []byte("{"))+bytes.Count(v, []byte("[")) > MaxDepth-1 {
			return
		}
		var one [1]Value
		if ok := Lookup(v, []string{"k"}, one[:]); ok != gjson.ValidBytes(v) {
			t.Fatalf("Lookup(%q) valid = %v, gjson %v", v, ok, !ok)
		}
		doc := append(append([]byte(`{"x":0,"k":`), v...), `,"k":1}`...)
		var got [2]Value
		if !Lookup(doc, []string{"x", "k"}, got[:]) {
			if gjson.ValidBytes(doc) {
				t.Fatalf("Lookup refuses %q", doc)
			}
			return
		}
		want := gjson.GetBytes(doc, "k")
		if got[1].Exists() != want.Exists() || got[1].Present() != (want.Exists() && want.Type != gjson.Null) || got[1].IsObject() != want.IsObject() {
			t.Fatalf("%q: exists %v present %v object %v; gjson %+v", v, got[1].Exists(), got[1].Present(), got[1].IsObject(), want)
		}
		if g, w := got[1].Int(), want.Int(); g != w {
			t.Fatalf("%q: Int %d, gjson %d", v, g, w)
		}
		if g, w := got[1].Text(), want.String(); g != w {
			t.Fatalf("%q: Text %q, gjson %q", v, g, w)
		}
	})
}
