package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire/wiretest"
)

func TestParseEmbeddingsRequest(t *testing.T) {
	for _, tc := range []struct {
		name         string
		body         string
		inputs       int
		minIn, maxIn int64
	}{
		{"string", `{"model":"text-embedding-3-small","input":"The food was delicious and the waiter...","encoding_format":"float"}`, 1, 9, 14},
		{"strings", `{"input":["one","two","three"],"model":"text-embedding-3-small"}`, 3, 3, 6},
		{"token ids: exact", `{"model":"text-embedding-3-small","input":[1,2,3,4,5]}`, 1, 5, 5},
		{"token arrays: exact", `{"model":"text-embedding-3-small","input":[[1,2],[3],[]],"dimensions":256}`, 3, 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ParseEmbeddingsRequest([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if req.Model != "text-embedding-3-small" || !req.NoOutput || req.Messages != tc.inputs || req.Stream || req.MaxTokens != 0 {
				t.Errorf("got %+v", req)
			}
			if req.InputTokens < tc.minIn || req.InputTokens > tc.maxIn {
				t.Errorf("input estimate %d, want in [%d, %d]", req.InputTokens, tc.minIn, tc.maxIn)
			}
		})
	}
}

func TestParseEmbeddingsRequestErrors(t *testing.T) {
	for body, want := range map[string]string{
		`{"input":"x"}`:                       "model: field required",
		`{"model":"m"}`:                       "input: field required",
		`{"model":"m","input":{}}`:            "input: must be a string, an array of strings or an array of token arrays",
		`{"model":"m","input":[true]}`:        "input.0: must be a string or an array of token ids",
		`{"model":"m","input":[1,2.5]}`:       "input.1: must be a non-negative integer token id",
		`{"model":"m","input":[[1],["a"]]}`:   "input.1.0: must be an integer token id",
		`{"model":"m","input":"a","Input":1}`: `input: the key "Input" differs from it only in case; spell it input`,
	} {
		_, err := ParseEmbeddingsRequest([]byte(body))
		if !errors.Is(err, wire.ErrInvalidRequest) || err.Error() != want {
			t.Errorf("%s: got %v, want %q", body, err, want)
		}
	}
}

func TestEmbeddingsUsage(t *testing.T) {
	body := `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023064255,-0.009327292]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}`
	u, m, ok := Embeddings{}.UsageFromJSON([]byte(body))
	if !ok || m != "text-embedding-3-small" || u != (accounting.Usage{InputTokens: 8}) {
		t.Errorf("got %+v %q %v", u, m, ok)
	}
}

func FuzzParseEmbeddingsRequest(f *testing.F) {
	for _, s := range []string{`{"model":"m","input":"x"}`, `{"model":"m","input":[[1,2],[3]]}`, `{"model":"m","input":["a",1]}`, `{"model":"m","input":[-1]}`, `[`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseEmbeddingsRequest(b)
		if err != nil {
			if !errors.Is(err, wire.ErrInvalidRequest) {
				t.Fatalf("error %v is not an invalid-request error", err)
			}
			return
		}
		if !json.Valid(b) || req.Model == "" || req.InputTokens < 0 || !req.NoOutput {
			t.Fatalf("accepted %q as %+v", b, req)
		}
		if got := wiretest.OneReading(t, b, map[string]wiretest.Kind{"model": wiretest.String}); got["model"] != req.Model {
			t.Fatalf("model %q, encoding/json %#v", req.Model, got["model"])
		}
	})
}

func BenchmarkParseEmbeddingsRequest(b *testing.B) {
	inputs := make([]string, 512)
	for i := range inputs {
		inputs[i] = fmt.Sprintf("Document %d: %s", i, strings.Repeat("the quick brown fox jumps over the lazy dog ", 4))
	}
	body, _ := json.Marshal(map[string]any{"model": "text-embedding-3-small", "input": inputs})
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := ParseEmbeddingsRequest(body); err != nil {
			b.Fatal(err)
		}
	}
}
