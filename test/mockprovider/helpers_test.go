package mockprovider

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// startMock runs a mock on a free port for the duration of the test.
func startMock(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

func anthropicHeaders() http.Header {
	h := http.Header{}
	h.Set("x-api-key", "sk-ant-test")
	h.Set("anthropic-version", "2023-06-01")
	h.Set("content-type", "application/json")
	return h
}

func openaiHeaders() http.Header {
	h := http.Header{}
	h.Set("authorization", "Bearer sk-test")
	h.Set("content-type", "application/json")
	return h
}

// with returns a copy of h with extra headers, given as name, value pairs.
func with(h http.Header, kv ...string) http.Header {
	out := h.Clone()
	for i := 0; i+1 < len(kv); i += 2 {
		out.Set(kv[i], kv[i+1])
	}
	return out
}

// post sends body and reads the whole response; readErr is the body read
// error (an aborted stream), which some tests expect.
func post(t *testing.T, url, body string, h http.Header) (resp *http.Response, got []byte, readErr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	got, readErr = io.ReadAll(resp.Body)
	return resp, got, readErr
}

func mustJSON(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("response is not a JSON object: %v\n%s", err, b)
	}
	return m
}

// num reads a JSON number at a dotted path of a decoded object.
func num(t *testing.T, m map[string]any, path string) int64 {
	t.Helper()
	var cur any = m
	for _, k := range strings.Split(path, ".") {
		obj, ok := cur.(map[string]any)
		if !ok {
			t.Fatalf("%s: %q is not inside an object", path, k)
		}
		cur, ok = obj[k]
		if !ok {
			t.Fatalf("%s: missing %q", path, k)
		}
	}
	f, ok := cur.(float64)
	if !ok {
		t.Fatalf("%s: %v is not a number", path, cur)
	}
	return int64(f)
}

// sseEvent is one event as the tests' own decoder sees it.
type sseEvent struct {
	Event string // empty for data-only (OpenAI) streams
	Data  string
}

// decodeSSE is an independent, strict SSE reader: events end with a blank
// line; each event has at most one "event: " line followed by exactly one
// "data: " line; no other fields, no CR. A body that does not end on an
// event boundary is an error (with the complete events decoded so far).
func decodeSSE(body []byte) ([]sseEvent, error) {
	var events []sseEvent
	rest := body
	for len(rest) > 0 {
		end := bytes.Index(rest, []byte("\n\n"))
		if end < 0 {
			return events, fmt.Errorf("truncated event at byte %d: %q", len(body)-len(rest), rest)
		}
		block := string(rest[:end])
		rest = rest[end+2:]
		if strings.Contains(block, "\r") {
			return events, errors.New("CR in event")
		}
		var ev sseEvent
		lines := strings.Split(block, "\n")
		if len(lines) == 2 {
			name, ok := strings.CutPrefix(lines[0], "event: ")
			if !ok || name == "" {
				return events, fmt.Errorf("want an event line, got %q", lines[0])
			}
			ev.Event = name
			lines = lines[1:]
		}
		if len(lines) != 1 {
			return events, fmt.Errorf("want one data line per event, got %q", block)
		}
		data, ok := strings.CutPrefix(lines[0], "data: ")
		if !ok {
			return events, fmt.Errorf("want a data line, got %q", lines[0])
		}
		ev.Data = data
		events = append(events, ev)
	}
	return events, nil
}

// encodeSSE is decodeSSE's inverse, for the fuzz round trip.
func encodeSSE(events []sseEvent) []byte {
	var b bytes.Buffer
	for _, e := range events {
		if e.Event != "" {
			b.WriteString("event: " + e.Event + "\n")
		}
		b.WriteString("data: " + e.Data + "\n\n")
	}
	return b.Bytes()
}

// fixturesDir finds shared/fixtures by walking up from the working directory,
// skipping the test when the recordings are not present.
func fixturesDir(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		cand := filepath.Join(dir, "shared", "fixtures")
		if st, err := os.Stat(cand); err == nil && st.IsDir() {
			return cand
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("shared/fixtures not found next to the repository; recorded-traffic comparison skipped")
		}
		dir = parent
	}
}

// recordingWriter is an http.ResponseWriter that keeps every Write as a
// separate piece, to check how a stream was cut into writes.
type recordingWriter struct {
	mu     sync.Mutex
	header http.Header
	status int
	writes [][]byte
}

func newRecordingWriter() *recordingWriter { return &recordingWriter{header: http.Header{}} }

func (r *recordingWriter) Header() http.Header { return r.header }

func (r *recordingWriter) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

func (r *recordingWriter) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.writes = append(r.writes, append([]byte(nil), b...))
	return len(b), nil
}

func (r *recordingWriter) Flush() {}

func (r *recordingWriter) body() []byte { return bytes.Join(r.writes, nil) }
