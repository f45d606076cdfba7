package anthropic

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/accounting"
	"sigs.k8s.io/yaml"
)

// recordedDir finds shared/fixtures/anthropic-recorded by walking up from
// the test's working directory (the fixtures live next to the repository,
// never in it) and skips the test when a plain clone has no such folder.
func recordedDir(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "shared", "fixtures", "anthropic-recorded")
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("recorded fixtures not found: no shared/fixtures/anthropic-recorded above the working directory")
		}
		dir = parent
	}
}

type interaction struct {
	Request struct {
		Body string `json:"body"`
		URL  string `json:"url"`
	} `json:"request"`
	Response struct {
		Body string `json:"body"`
		Code int    `json:"code"`
	} `json:"response"`
}

type recording struct {
	name string
	interaction
}

// recordings returns every interaction of every cassette.
func recordings(t testing.TB) []recording {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(recordedDir(t), "cassettes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no cassettes: %v", err)
	}
	var out []recording
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var c struct {
			Interactions []interaction `json:"interactions"`
		}
		if err := yaml.Unmarshal(raw, &c); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for i, in := range c.Interactions {
			out = append(out, recording{name: filepath.Base(f) + "#" + string(rune('0'+i)), interaction: in})
		}
	}
	return out
}

// recordedStreams returns every recorded SSE body: the streaming cassette
// responses and sse/*.sse.
func recordedStreams(t testing.TB) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, r := range recordings(t) {
		if strings.HasPrefix(r.Response.Body, "event:") {
			out[r.name] = []byte(r.Response.Body)
		}
	}
	files, _ := filepath.Glob(filepath.Join(recordedDir(t), "sse", "*.sse"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	if len(out) < 4 {
		t.Fatalf("found only %d recorded streams", len(out))
	}
	return out
}

// Independent expectations, decoded with encoding/json into generic maps
// and merged with the SDKs' rule, sharing no code with the parser.

type obj = map[string]any

func num(m obj, k string) (int64, bool) {
	v, ok := m[k].(json.Number)
	if !ok {
		return 0, false
	}
	n, err := v.Int64()
	return n, err == nil
}

func decodeObj(t testing.TB, b []byte) obj {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m obj
	if err := d.Decode(&m); err != nil {
		t.Fatalf("decode %q: %v", b, err)
	}
	return m
}

type expectation struct {
	input, output, read, write int64
	split                      obj // cache_creation, nil when absent or null
	model                      string
	tier                       string // usage.service_tier, the last non-empty one
	final                      bool
	text                       int64
}

func (e expectation) usage() accounting.Usage {
	u := accounting.Usage{InputTokens: e.input, OutputTokens: e.output, CacheReadTokens: e.read, CacheWrite5mTokens: e.write, ServiceTier: e.tier}
	if e.split != nil {
		u.CacheWrite5mTokens, _ = num(e.split, "ephemeral_5m_input_tokens")
		u.CacheWrite1hTokens, _ = num(e.split, "ephemeral_1h_input_tokens")
		if rest := e.write - u.CacheWrite5mTokens - u.CacheWrite1hTokens; rest > 0 {
			u.CacheWrite5mTokens += rest
		}
	}
	return u
}

func (e *expectation) setFrom(usage obj, all bool) {
	for k, dst := range map[string]*int64{"input_tokens": &e.input, "cache_read_input_tokens": &e.read, "cache_creation_input_tokens": &e.write} {
		if n, ok := num(usage, k); ok || all {
			*dst = n
		}
	}
	e.output, _ = num(usage, "output_tokens")
	if t, _ := usage["service_tier"].(string); t != "" {
		e.tier = t
	}
	if all {
		e.split, _ = usage["cache_creation"].(obj)
	}
}

func expectJSON(t testing.TB, body []byte) expectation {
	m := decodeObj(t, body)
	var e expectation
	e.setFrom(m["usage"].(obj), true)
	e.model, _ = m["model"].(string)
	return e
}

func expectSSE(t testing.TB, stream []byte) expectation {
	var e expectation
	norm := strings.ReplaceAll(strings.ReplaceAll(string(stream), "\r\n", "\n"), "\r", "\n")
	for _, block := range strings.Split(norm, "\n\n") {
		var data []string
		for _, line := range strings.Split(block, "\n") {
			if v, ok := strings.CutPrefix(line, "data:"); ok {
				data = append(data, strings.TrimPrefix(v, " "))
			}
		}
		if len(data) == 0 {
			continue
		}
		ev := decodeObj(t, []byte(strings.Join(data, "\n")))
		switch ev["type"] {
		case "message_start":
			msg := ev["message"].(obj)
			e.model, _ = msg["model"].(string)
			e.setFrom(msg["usage"].(obj), true)
		case "message_delta":
			if u, ok := ev["usage"].(obj); ok {
				e.setFrom(u, false)
				e.final = true
			}
		case "message_stop":
			e.final = true
		case "content_block_start", "content_block_delta":
			for _, k := range []string{"content_block", "delta"} {
				if d, ok := ev[k].(obj); ok {
					for _, f := range []string{"text", "partial_json", "thinking"} {
						s, _ := d[f].(string)
						e.text += int64(len(s))
					}
				}
			}
		}
	}
	return e
}
