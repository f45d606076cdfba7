package mockprovider

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"regexp"
	"strconv"
	"time"
)

// OpenAI's explicit prompt-cache breakpoints, from gpt-5.6 on: a content
// part may carry "prompt_cache_breakpoint": {"mode": "explicit"} (Chat:
// text, image_url and input_audio parts; Responses: input_text, input_image
// and input_file), and the request's prompt_cache_options {mode, ttl}
// chooses how they count: "implicit" (the default) writes the latest 3
// explicit breakpoints besides the automatic one, "explicit" the latest 4;
// "30m" is the only TTL
// (https://platform.openai.com/docs/guides/prompt-caching, and the
// prompt_cache_options and prompt_cache_breakpoint request fields of
// https://platform.openai.com/docs/api-reference/responses/create).
//
// The mock keeps it deterministic: a breakpoint's prefix is the model, the
// tools, the instructions (Responses) and every message or item up to and
// including the marked part, hashed with the markers themselves left out
// (moving a breakpoint does not change the prompt), and its tokens are what
// the token rule gives that prefix. Of the breakpoints that count, the
// latest warm one is read (cached_tokens: its prefix), and the prompt from
// there to the latest breakpoint is written (cache_write_tokens), warming
// every breakpoint that counts for oaiExplicitTTL; no minimum length, no
// 128-token rounding (a breakpoint is not rounded to a block). A request
// with breakpoints on such a model is cached only by them: the automatic
// prefix cache is neither read nor warmed.
const oaiExplicitTTL = 30 * time.Minute

// explicitCacheModel matches the models that take explicit breakpoints:
// gpt-5.6 and every later gpt (gpt-5.7…, gpt-6…), with any suffix.
var explicitCacheModel = regexp.MustCompile(`^gpt-(\d+)(?:\.(\d+))?(?:-|$)`)

func takesBreakpoints(model string) bool {
	m := explicitCacheModel.FindStringSubmatch(model)
	if m == nil {
		return false
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	return major > 5 || major == 5 && minor >= 6
}

// oaiBreakpoint is one explicit breakpoint: its prefix's key and tokens.
type oaiBreakpoint struct {
	key    [32]byte
	tokens int64
}

// oaiCacheOptions is prompt_cache_options.
type oaiCacheOptions struct {
	Mode string `json:"mode"`
	TTL  string `json:"ttl"`
}

// counted is how many of the latest breakpoints the mode writes.
func (o *oaiCacheOptions) counted() (int, error) {
	if o == nil {
		return 3, nil
	}
	if o.TTL != "" && o.TTL != "30m" {
		return 0, &oaiRequestError{msg: fmt.Sprintf("Invalid value: '%s'. Supported values are: '30m'.", o.TTL), param: "prompt_cache_options.ttl", code: "invalid_value"}
	}
	switch o.Mode {
	case "", "implicit":
		return 3, nil
	case "explicit":
		return 4, nil
	}
	return 0, &oaiRequestError{msg: fmt.Sprintf("Invalid value: '%s'. Supported values are: 'implicit' and 'explicit'.", o.Mode), param: "prompt_cache_options.mode", code: "invalid_value"}
}

// bpWalker hashes a prompt prefix by prefix and collects its breakpoints.
type bpWalker struct {
	h      hash.Hash
	run    int64 // tokens of the prompt before the current message
	bps    []oaiBreakpoint
	allow  map[string]bool // the part types that may carry a marker
	images int64
}

func newBPWalker(model string, tools []json.RawMessage, toolsTokens int64, allow map[string]bool, images int64) *bpWalker {
	w := &bpWalker{h: sha256.New(), run: toolsTokens, allow: allow, images: images}
	w.h.Write([]byte("openai-explicit\x00" + model + "\x00"))
	for _, t := range tools {
		w.h.Write(t)
		w.h.Write([]byte{0})
	}
	return w
}

// text hashes a string that is part of the prompt (Responses instructions).
func (w *bpWalker) text(s string, tokens int64) {
	w.h.Write([]byte(strconv.Quote(s)))
	w.h.Write([]byte{0})
	w.run += tokens
}

// message hashes one message or input item (tokens: its whole count by the
// token rule, overhead included: overhead) and records the breakpoints on
// its content parts, with the tokens of the prompt up to each.
func (w *bpWalker) message(raw json.RawMessage, tokens, overhead int64, at string) error {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		w.h.Write(raw)
		w.h.Write([]byte{0})
		w.run += tokens
		return nil
	}
	content, hasContent := m["content"]
	delete(m, "content")
	w.h.Write(marshal(m)) // encoding/json sorts map keys: one spelling per message
	content = bytes.TrimSpace(content)
	if !hasContent || len(content) == 0 || content[0] != '[' {
		w.h.Write(content)
		w.h.Write([]byte{0})
		w.run += tokens
		return nil
	}
	var parts []map[string]json.RawMessage
	if json.Unmarshal(content, &parts) != nil {
		w.h.Write(content)
		w.h.Write([]byte{0})
		w.run += tokens
		return nil
	}
	sofar := overhead
	for j, part := range parts {
		mark, marked := part["prompt_cache_breakpoint"]
		delete(part, "prompt_cache_breakpoint")
		w.h.Write(marshal(part))
		var typ string
		_ = json.Unmarshal(part["type"], &typ)
		sofar += partTokens(typ, part["text"], w.images)
		if !marked || bytes.Equal(bytes.TrimSpace(mark), []byte("null")) {
			continue
		}
		var bp struct {
			Mode string `json:"mode"`
		}
		if json.Unmarshal(mark, &bp) != nil || bp.Mode != "explicit" {
			return &oaiRequestError{msg: fmt.Sprintf("Invalid '%s.content[%d].prompt_cache_breakpoint': expected an object with mode 'explicit'.", at, j),
				param: fmt.Sprintf("%s.content[%d].prompt_cache_breakpoint", at, j), code: "invalid_value"}
		}
		if !w.allow[typ] {
			return &oaiRequestError{msg: fmt.Sprintf("Unknown parameter: '%s.content[%d].prompt_cache_breakpoint'.", at, j),
				param: fmt.Sprintf("%s.content[%d].prompt_cache_breakpoint", at, j), code: "unknown_parameter"}
		}
		var b oaiBreakpoint
		w.h.Sum(b.key[:0])
		b.tokens = w.run + sofar
		w.bps = append(w.bps, b)
	}
	w.h.Write([]byte{0})
	w.run += tokens
	return nil
}

// partTokens is the token rule for one content part: text its text, a
// refusal nothing, anything else (image, audio, file) the image count.
func partTokens(typ string, text json.RawMessage, images int64) int64 {
	var s *string
	_ = json.Unmarshal(text, &s)
	switch {
	case s != nil:
		return ceilTokens(len(*s))
	case typ == "refusal":
		return 0
	}
	return images
}

// The part types that carry a marker, by API.
var (
	chatBreakpointParts      = map[string]bool{"text": true, "image_url": true, "input_audio": true}
	responsesBreakpointParts = map[string]bool{"input_text": true, "input_image": true, "input_file": true}
)

// planExplicit returns what a prompt with these breakpoints reads from and
// writes to the cache at now, of which the latest counted count, and the
// plan that warms them.
func (c *promptCache) planExplicit(bps []oaiBreakpoint, counted int, now time.Time) (read, written int64, plan cachePlan) {
	if len(bps) == 0 {
		return 0, 0, plan
	}
	bps = bps[max(len(bps)-counted, 0):]
	hit := -1
	c.mu.Lock()
	for i := len(bps) - 1; i >= 0; i-- {
		if e, ok := c.entries[bps[i].key]; ok && now.Before(e.expires) {
			hit = i
			break
		}
	}
	c.mu.Unlock()
	if hit >= 0 {
		k := bps[hit].key
		plan.hit = &k
		read = bps[hit].tokens
	}
	for _, b := range bps[hit+1:] {
		plan.writes = append(plan.writes, cacheWrite{key: b.key, ttl: oaiExplicitTTL})
	}
	written = bps[len(bps)-1].tokens - read
	return read, written, plan
}
