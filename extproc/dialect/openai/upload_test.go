package openai

import (
	"bytes"
	"errors"
	"mime/multipart"
	"strconv"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// form builds a multipart/form-data body of fields in order; a field named
// "file" is a file part.
func form(t testing.TB, fields ...[2]string) (contentType string, body []byte) {
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	for _, f := range fields {
		var err error
		if f[0] == "file" {
			var fw interface{ Write([]byte) (int, error) }
			if fw, err = w.CreateFormFile("file", "batch.jsonl"); err == nil {
				_, err = fw.Write([]byte(f[1]))
			}
		} else {
			err = w.WriteField(f[0], f[1])
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return w.FormDataContentType(), b.Bytes()
}

func TestParseFileUpload(t *testing.T) {
	cases := []struct {
		name    string
		fields  [][2]string
		purpose string
		lines   int
		err     error
	}{
		{"purpose first", [][2]string{{"purpose", "batch"}, {"file", batchFile}}, "batch", 2, nil},
		{"purpose after the file", [][2]string{{"file", batchFile}, {"purpose", "batch"}}, "batch", 2, nil},
		{"another purpose: the file is not read", [][2]string{{"purpose", "fine-tune"}, {"file", "not jsonl at all"}}, "fine-tune", 0, nil},
		{"another purpose after an unreadable file", [][2]string{{"file", "not jsonl"}, {"purpose", "assistants"}}, "assistants", 0, nil},
		{"a batch file that is not one", [][2]string{{"purpose", "batch"}, {"file", "nope"}}, "batch", 0, ErrBatchFileInvalid},
		{"a batch without a file", [][2]string{{"purpose", "batch"}}, "batch", 0, ErrBatchFileInvalid},
		{"two files", [][2]string{{"purpose", "batch"}, {"file", batchFile}, {"file", batchFile}}, "batch", 0, ErrBatchFileInvalid},
		{"too many lines", [][2]string{{"purpose", "batch"}, {"file", batchFile}}, "batch", 0, ErrBatchFileTooLarge},
		{"other fields ignored", [][2]string{{"expires_after[anchor]", "created_at"}, {"purpose", " batch "}, {"file", batchFile}}, "batch", 2, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ct, body := form(t, tc.fields...)
			lim := BatchFileLimits{}
			if tc.err == ErrBatchFileTooLarge {
				lim.MaxLines = 1
			}
			up, err := ParseFileUpload(ct, bytes.NewReader(body), lim)
			if up.Purpose != tc.purpose {
				t.Fatalf("purpose %q, want %q", up.Purpose, tc.purpose)
			}
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || len(up.Lines) != tc.lines {
				t.Fatalf("%d lines, %v; want %d", len(up.Lines), err, tc.lines)
			}
		})
	}
	if _, err := ParseFileUpload("application/json", strings.NewReader("{}"), BatchFileLimits{}); !errors.Is(err, ErrNotForm) {
		t.Fatalf("a JSON body: %v", err)
	}
	// A form cut short after purpose=batch is refused, not read in part.
	ct, body := form(t, [2]string{"purpose", "batch"}, [2]string{"file", batchFile})
	if up, err := ParseFileUpload(ct, bytes.NewReader(body[:len(body)-20]), BatchFileLimits{}); err == nil || up.Purpose != "batch" {
		t.Fatalf("a cut form: %+v %v", up, err)
	}
}

func FuzzParseFileUpload(f *testing.F) {
	ct, body := form(f, [2]string{"purpose", "batch"}, [2]string{"file", batchFile})
	f.Add(body)
	_, other := form(f, [2]string{"file", "x"}, [2]string{"purpose", "vision"})
	f.Add(other)
	f.Add([]byte("--x\r\n\r\n--x--"))
	f.Fuzz(func(t *testing.T, b []byte) {
		up, err := ParseFileUpload(ct, bytes.NewReader(b), BatchFileLimits{MaxLines: 10, MaxBytes: 4096})
		if up.Purpose != BatchPurpose && len(up.Lines) > 0 {
			t.Fatalf("lines for purpose %q", up.Purpose)
		}
		if up.Purpose == BatchPurpose && err == nil && (len(up.Lines) == 0 || len(up.Lines) > 10) {
			t.Fatalf("a batch of %d lines with no error", len(up.Lines))
		}
		if up.Purpose != BatchPurpose && up.Purpose != "" && err != nil {
			t.Fatalf("purpose %q refused: %v", up.Purpose, err)
		}
	})
}

func TestBatchIDsAndObjects(t *testing.T) {
	for path, want := range map[string]string{"/v1/batches/batch_abc": "batch_abc", "/v1/batches/batch_abc?x=1": "batch_abc",
		"/v1/batches/batch_abc/cancel": "", "/v1/batches": "", "/v1/batches/": "", "/v1/batches/a{b}": ""} {
		if id, ok := BatchIDOfPath(path); id != want && ok || ok != (want != "") {
			t.Errorf("%s: %q %v, want %q", path, id, ok, want)
		}
	}
	if id, err := ParseFileObject([]byte(`{"id":"file-abc","object":"file","purpose":"batch"}`)); err != nil || id != "file-abc" {
		t.Fatalf("%q %v", id, err)
	}
	for _, bad := range []string{`{"id":"file-abc","object":"batch"}`, `{"object":"file"}`, `{"id":"a:b","object":"file"}`, `[]`} {
		if _, err := ParseFileObject([]byte(bad)); err == nil {
			t.Errorf("%s read as a file", bad)
		}
	}
	if c, err := ParseBatchCreate([]byte(`{"input_file_id":"file-1","endpoint":"/v1/chat/completions","completion_window":"24h"}`)); err != nil || c.InputFileID != "file-1" || c.Endpoint != "/v1/chat/completions" {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := ParseBatchCreate([]byte(`{"endpoint":"/v1/chat/completions"}`)); !errors.Is(err, wire.ErrInvalidRequest) {
		t.Fatalf("no file: %v", err)
	}
}

// BenchmarkParseFileUpload reads a batch upload of 10,000 Chat Completions
// lines (about 2.4 MB): the cost of estimating a batch file on upload.
func BenchmarkParseFileUpload(b *testing.B) {
	var file strings.Builder
	for i := range 10_000 {
		file.WriteString(`{"custom_id":"r` + strings.Repeat("0", 5-len(itoa(i))) + itoa(i) + `","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o","max_tokens":100,"messages":[{"role":"system","content":"You are a careful assistant who answers in one paragraph."},{"role":"user","content":"Summarise the quarterly report in three bullet points, please. Keep it short."}]}}` + "\n")
	}
	ct, body := form(b, [2]string{"purpose", "batch"}, [2]string{"file", file.String()})
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		up, err := ParseFileUpload(ct, bytes.NewReader(body), BatchFileLimits{})
		if err != nil || len(up.Lines) != 10_000 {
			b.Fatal(len(up.Lines), err)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
