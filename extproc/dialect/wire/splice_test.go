package wire

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// FuzzAppendJSONString holds the encoder to gjson's, which the model rewrite
// used before it, byte for byte, and checks that what it writes decodes back.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "claude-sonnet-4-5", "we\"ird\\name\n", "<a&b>", "\u2028\u2029", "\x00\x1f\x7f", "\x80\xff", "caf\u00e9 😀", "\xed\xa0\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := AppendJSONString([]byte("x"), s)
		if want := gjson.AppendJSONString([]byte("x"), s); string(got) != string(want) {
			t.Fatalf("%q: got %s, gjson %s", s, got, want)
		}
		var back string
		if err := json.Unmarshal(got[1:], &back); err != nil {
			t.Fatalf("%q: %s does not decode: %v", s, got, err)
		}
		if utf8.ValidString(s) && back != s {
			t.Fatalf("%q decodes back as %q", s, back)
		}
	})
}

func TestEditModel(t *testing.T) {
	body := []byte(`{"model" : "a", "x":1}`)
	var idx Index
	var edits Edits
	if err := EditModel(&idx, "b", &edits); err == nil {
		t.Fatal("no model found, yet no error")
	}
	idx.Model = Span{11, 14}
	if err := EditModel(&idx, `b"<`, &edits); err != nil {
		t.Fatal(err)
	}
	out, err := Apply(body, &edits)
	if err != nil || string(out) != `{"model" : "b\"\u003c", "x":1}` {
		t.Fatalf("%s, %v", out, err)
	}
	for edits.Len() < MaxEdits {
		edits.Add(0, 0, "")
	}
	if err := EditModel(&idx, "c", &edits); err != ErrTooManyEdits {
		t.Fatalf("full edits: %v", err)
	}
}

func TestTokenCounterSince(t *testing.T) {
	a, b := []byte("some text, 12345 and more"), []byte("\u00e9 then punctuation!!")
	var whole TokenCounter
	whole.AddTokens(7)
	whole.Add(a)
	start := whole
	whole.Add(b)
	whole.AddTokens(3)
	var apart TokenCounter
	apart.Add(b)
	apart.AddTokens(3)
	if got, want := whole.Since(start), apart.Tokens(); got != want {
		t.Errorf("Since = %d, a counter of its own = %d", got, want)
	}
	if got := whole.Since(whole); got != 0 {
		t.Errorf("Since itself = %d", got)
	}
}
