package openai

import (
	"strings"
	"unsafe"

	"github.com/tidwall/gjson"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Reference oracle: the gjson reading of responses that the wire.Reader
// (Lookup, Value) replaced, kept as it was so FuzzResponseMatchesGJSON can
// hold the new reading to it and BenchmarkReadResponse can compare them,
// with one change, refGet: gjson.Get on a string value scans the string's
// text for a '{' or '[' and reads what follows as JSON (a choice sent as
// "{\"delta\":…}" had its text counted); the new reader finds nothing in a
// value that is not an object, as the callers always assumed, and so does
// refGet.

// refGet is gjson.Get, finding nothing in a string.
func refGet(json, path string) gjson.Result {
	if t := strings.TrimLeft(json, " \t\n\r"); t != "" && t[0] == '"' {
		return gjson.Result{}
	}
	return gjson.Get(json, path)
}

// bytesOf views s as bytes without copying, as the old wire.StringFieldsLen
// viewed gjson's Raw strings.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

func refFromUsage(u gjson.Result) accounting.Usage {
	prompt := max(u.Get("prompt_tokens").Int(), 0)
	cached := min(max(u.Get("prompt_tokens_details.cached_tokens").Int(), 0), prompt)
	written := min(max(u.Get("prompt_tokens_details.cache_write_tokens").Int(), 0), prompt-cached)
	return accounting.Usage{
		InputTokens:        prompt - cached - written,
		OutputTokens:       max(u.Get("completion_tokens").Int(), 0),
		CacheReadTokens:    cached,
		CacheWrite5mTokens: written,
	}
}

// refTier is wire.ServiceTier read with gjson: a non-empty string of at most
// wire.MaxServiceTierLength bytes replaces cur.
func refTier(r gjson.Result, cur string) string {
	if r.Type != gjson.String || r.Str == "" || len(r.Str) > wire.MaxServiceTierLength {
		return cur
	}
	return strings.Clone(r.Str)
}

// refUsageFromJSON is the old UsageFromJSON.
func refUsageFromJSON(body []byte) (usage accounting.Usage, model string, ok bool) {
	js := wire.View(body)
	if !gjson.Valid(js) {
		return usage, "", false
	}
	u := refGet(js, "usage")
	if !u.IsObject() {
		return usage, "", false
	}
	usage = refFromUsage(u)
	usage.ServiceTier = refTier(refGet(js, "service_tier"), "")
	return usage, strings.Clone(refGet(js, "model").String()), true
}

// refStreamParser is the old StreamParser, with the old wire.StreamState's
// gjson half inlined.
type refStreamParser struct {
	dec      wire.SSEDecoder
	model    string
	outBytes int64
	errKind  string
	errMsg   string
	hasErr   bool
	invalid  int
	usage    accounting.Usage
	tier     string
	final    bool
	done     bool
}

func (p *refStreamParser) Write(chunk []byte) { p.dec.Write(chunk, p) }
func (p *refStreamParser) Usage() (accounting.Usage, bool) {
	u := p.usage
	u.ServiceTier = p.tier
	return u, p.final
}
func (p *refStreamParser) Model() string                      { return p.model }
func (p *refStreamParser) OutputTextBytes() int64             { return p.outBytes }
func (p *refStreamParser) Error() (kind, msg string, ok bool) { return p.errKind, p.errMsg, p.hasErr }
func (p *refStreamParser) Dropped() int                       { return p.dec.Dropped() + p.invalid }

func (p *refStreamParser) Event(_, data []byte) {
	if strings.HasPrefix(wire.View(data), "[DONE]") {
		p.done = true
		return
	}
	js := wire.View(data)
	if !gjson.Valid(js) {
		p.invalid++
		return
	}
	if e := refGet(js, "error"); e.Exists() && e.Type != gjson.Null {
		kind := refGet(e.Raw, "type").String()
		if kind == "" {
			kind = refGet(e.Raw, "code").String()
		}
		if !p.hasErr {
			p.errKind, p.errMsg, p.hasErr = strings.Clone(kind), strings.Clone(refGet(e.Raw, "message").String()), true
		}
		return
	}
	if m := refGet(js, "model"); m.Type == gjson.String && m.Str != p.model {
		p.model = strings.Clone(m.Str)
	}
	p.tier = refTier(refGet(js, "service_tier"), p.tier)
	if u := refGet(js, "usage"); u.IsObject() {
		p.usage = refFromUsage(u)
		p.final = true
	}
	refGet(js, "choices").ForEach(func(_, choice gjson.Result) bool {
		d := refGet(choice.Raw, "delta")
		if !d.IsObject() {
			return true
		}
		p.outBytes += wire.StringFieldsLen(bytesOf(d.Raw), "content", "refusal", "reasoning", "reasoning_content")
		d.Get("tool_calls").ForEach(func(_, call gjson.Result) bool {
			p.outBytes += wire.StringFieldsLen(bytesOf(refGet(call.Raw, "function").Raw), "arguments")
			return true
		})
		return true
	})
}
