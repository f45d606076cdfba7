package openai

import (
	"errors"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

const batchFile = `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o","max_tokens":40,"messages":[{"role":"user","content":"hello there"}]}}

{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o","messages":[{"role":"user","content":"write more"}]}}
`

func TestParseBatchFile(t *testing.T) {
	line := `{"custom_id":"x","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}` + "\n"
	cases := []struct {
		name  string
		in    string
		lim   BatchFileLimits
		lines int
		err   error
	}{
		{"two lines, a blank between", batchFile, BatchFileLimits{}, 2, nil},
		{"over the line limit", strings.Repeat(line, 3), BatchFileLimits{MaxLines: 2}, 0, ErrBatchFileTooLarge},
		{"at the line limit", strings.Repeat(line, 2), BatchFileLimits{MaxLines: 2}, 2, nil},
		{"over the byte limit", strings.Repeat(line, 3), BatchFileLimits{MaxBytes: int64(len(line))*2 + 1}, 0, ErrBatchFileTooLarge},
		{"empty", "\n\n", BatchFileLimits{}, 0, ErrBatchFileInvalid},
		{"embeddings", `{"custom_id":"x","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":"a"}}`, BatchFileLimits{}, 1, nil},
		{"responses", `{"custom_id":"x","method":"POST","url":"/v1/responses","body":{"model":"m","input":"hello","max_output_tokens":9}}`, BatchFileLimits{}, 1, nil},
		{"an endpoint not estimated", `{"custom_id":"x","method":"POST","url":"/v1/moderations","body":{"model":"m","input":"a"}}`, BatchFileLimits{}, 0, ErrBatchFileInvalid},
		{"a GET", `{"custom_id":"x","method":"GET","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}`, BatchFileLimits{}, 0, ErrBatchFileInvalid},
		{"a body that is not its endpoint's request", `{"custom_id":"x","method":"POST","url":"/v1/chat/completions","body":{"model":"m","input":"a"}}`, BatchFileLimits{}, 0, wire.ErrInvalidRequest},
		{"stream", `{"custom_id":"x","method":"POST","url":"/v1/chat/completions","body":{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}}`, BatchFileLimits{}, 0, ErrBatchFileInvalid},
		{"not JSON", "nope", BatchFileLimits{}, 0, ErrBatchFileInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseBatchFile(strings.NewReader(tc.in), tc.lim)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || len(got) != tc.lines {
				t.Fatalf("%d lines, %v", len(got), err)
			}
			if got[0].Request.Model == "" || got[0].Request.InputTokens <= 0 {
				t.Fatalf("line 0 not estimated: %+v", got[0].Request)
			}
		})
	}
}

func TestParseBatchObject(t *testing.T) {
	s, err := ParseBatchObject([]byte(`{"id":"batch_1","object":"batch","status":"completed","usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":30},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":107}}`))
	if err != nil || !s.HasUsage || s.Status != "completed" || s.Usage.InputTokens != 70 || s.Usage.CacheReadTokens != 30 || s.Usage.OutputTokens != 7 || s.Usage.ServiceTier != "batch" {
		t.Fatalf("%+v %v", s, err)
	}
	if s, err = ParseBatchObject([]byte(`{"id":"batch_1","object":"batch","status":"in_progress"}`)); err != nil || s.HasUsage {
		t.Fatalf("%+v %v", s, err)
	}
	for _, bad := range []string{`{"id":"x","object":"file"}`, `{"object":"batch"}`, `[]`,
		`{"id":"b","object":"batch","usage":{"input_tokens":1,"input_tokens_details":{"cached_tokens":2}}}`} {
		if _, err := ParseBatchObject([]byte(bad)); !errors.Is(err, ErrBatchFileInvalid) {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

func FuzzParseBatchFile(f *testing.F) {
	f.Add([]byte(batchFile))
	f.Add([]byte("{}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		lines, err := ParseBatchFile(strings.NewReader(string(b)), BatchFileLimits{MaxLines: 10, MaxBytes: 4096})
		if err == nil && (len(lines) == 0 || len(lines) > 10) {
			t.Fatalf("%d lines with no error", len(lines))
		}
	})
}

func FuzzParseBatchObject(f *testing.F) {
	f.Add([]byte(`{"id":"batch_1","object":"batch","status":"completed","usage":{"input_tokens":3,"output_tokens":2}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseBatchObject(b)
		if err == nil && (s.Usage.InputTokens < 0 || s.Usage.CacheReadTokens < 0 || s.Usage.OutputTokens < 0) {
			t.Fatalf("negative usage %+v", s.Usage)
		}
	})
}

func TestParseBatchOutputLine(t *testing.T) {
	chat := `{"id":"batch_req_1","custom_id":"a","response":{"status_code":200,"request_id":"r","body":{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"prompt_tokens_details":{"cached_tokens":2}}}},"error":null}`
	l, err := ParseBatchOutputLine([]byte(chat), "/v1/chat/completions")
	if err != nil || !l.Succeeded || l.Usage.InputTokens != 10 || l.Usage.CacheReadTokens != 2 || l.Usage.OutputTokens != 30 || l.Usage.ServiceTier != "batch" || l.Model != "gpt-4o-2024-08-06" {
		t.Fatalf("%+v %v", l, err)
	}
	resp := `{"custom_id":"b","response":{"status_code":200,"body":{"id":"resp_1","object":"response","model":"gpt-4o","usage":{"input_tokens":5,"output_tokens":7,"total_tokens":12}}}}`
	if l, err := ParseBatchOutputLine([]byte(resp), "/v1/responses"); err != nil || l.Usage.InputTokens != 5 || l.Usage.OutputTokens != 7 {
		t.Fatalf("%+v %v", l, err)
	}
	for _, failed := range []string{`{"custom_id":"c","response":{"status_code":400,"body":{"error":{}}}}`, `{"custom_id":"c","response":null,"error":{"code":"x"}}`} {
		if l, err := ParseBatchOutputLine([]byte(failed), "/v1/chat/completions"); err != nil || l.Succeeded {
			t.Errorf("%s: %+v %v", failed, l, err)
		}
	}
	for _, bad := range []string{`nope`, `{"response":{"status_code":200,"body":{"id":"x"}}}`} {
		if _, err := ParseBatchOutputLine([]byte(bad), "/v1/chat/completions"); !errors.Is(err, ErrBatchFileInvalid) {
			t.Errorf("%s: %v", bad, err)
		}
	}
	for path, want := range map[string]string{"/v1/files/file-1/content": "file-1", "/v1/files/file-1/content?x": "file-1", "/v1/files/file-1": "", "/v1/files//content": ""} {
		if id, ok := FileContentID(path); id != want && ok || ok != (want != "") {
			t.Errorf("%s: %q %v", path, id, ok)
		}
	}
}

func FuzzParseBatchOutputLine(f *testing.F) {
	f.Add([]byte(`{"response":{"status_code":200,"body":{"usage":{"prompt_tokens":1,"completion_tokens":2}}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, url := range []string{"/v1/chat/completions", "/v1/responses"} {
			l, err := ParseBatchOutputLine(b, url)
			if err == nil && l.Succeeded && (l.Usage.InputTokens < 0 || l.Usage.OutputTokens < 0) {
				t.Fatalf("negative usage %+v", l.Usage)
			}
		}
	})
}
