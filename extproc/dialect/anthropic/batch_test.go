package anthropic

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func batchBody(n int, extra string) string {
	var b strings.Builder
	b.WriteString(`{"requests":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"custom_id":"r%d","params":{"model":"claude-sonnet-4-5","max_tokens":%d,%s"messages":[{"role":"user","content":"Hello number %d"}]}}`, i, 100+i, extra, i)
	}
	b.WriteString(`]}`)
	return b.String()
}

func TestParseBatch(t *testing.T) {
	lines, err := ParseBatch([]byte(batchBody(3, "")), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 3 {
		t.Fatalf("%d lines", len(lines))
	}
	for i, l := range lines {
		one, err := ParseRequest([]byte(fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":%d,"messages":[{"role":"user","content":"Hello number %d"}]}`, 100+i, i)))
		if err != nil {
			t.Fatal(err)
		}
		if l.CustomID != fmt.Sprint("r", i) || l.Request.MaxTokens != int64(100+i) || l.Request.InputTokens != one.InputTokens || l.Request.Model != "claude-sonnet-4-5" {
			t.Fatalf("line %d: %+v; want the estimate of the same request sent alone (%d input tokens)", i, l, one.InputTokens)
		}
	}
	for name, tc := range map[string]struct {
		body string
		max  int
		want error
	}{
		"not json":     {`{"requests":`, 0, ErrBatchInvalid},
		"no requests":  {`{"requests":[]}`, 0, ErrBatchInvalid},
		"no params":    {`{"requests":[{"custom_id":"a"}]}`, 0, ErrBatchInvalid},
		"streaming":    {batchBody(1, `"stream":true,`), 0, ErrBatchInvalid},
		"over the max": {batchBody(5, ""), 4, ErrBatchTooLarge},
		"bad params":   {`{"requests":[{"custom_id":"a","params":{"model":1}}]}`, 0, nil},
	} {
		_, err := ParseBatch([]byte(tc.body), tc.max)
		if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v; want %v", name, err, tc.want)
		}
	}
}

func FuzzParseBatch(f *testing.F) {
	f.Add([]byte(batchBody(2, "")))
	f.Add([]byte(`{"requests":[{"custom_id":"a","params":{}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		lines, err := ParseBatch(b, 1000)
		if err == nil && (len(lines) == 0 || len(lines) > 1000) {
			t.Fatalf("%d lines without an error", len(lines))
		}
	})
}
