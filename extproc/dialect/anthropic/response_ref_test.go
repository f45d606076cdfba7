package anthropic

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
// text for a '{' or '[' and reads what follows as JSON, so a provider that
// sent "message":"{\"usage\":…}" had that text metered; the new reader
// finds nothing in a value that is not an object, as the callers always
// assumed, and so does refGet.

// refGet is gjson.Get, finding nothing in a string.
func refGet(json, path string) gjson.Result {
	if t := strings.TrimLeft(json, " \t\n\r"); t != "" && t[0] == '"' {
		return gjson.Result{}
	}
	return gjson.Get(json, path)
}

func refPresent(r gjson.Result) bool { return r.Exists() && r.Type != gjson.Null }

func (u *rawUsage) refOverlay(obj gjson.Result) {
	set := func(dst *int64, key string) {
		if v := refGet(obj.Raw, key); refPresent(v) {
			*dst = max(v.Int(), 0)
		}
	}
	set(&u.input, "input_tokens")
	set(&u.cacheRead, "cache_read_input_tokens")
	set(&u.cacheWrite, "cache_creation_input_tokens")
	if v := refGet(obj.Raw, "service_tier"); v.Type == gjson.String && v.Str != "" && len(v.Str) <= wire.MaxServiceTierLength {
		u.tier = strings.Clone(v.Str)
	}
}

func refFromMessage(obj gjson.Result) rawUsage {
	var u rawUsage
	u.refOverlay(obj)
	u.output = max(refGet(obj.Raw, "output_tokens").Int(), 0)
	if cc := refGet(obj.Raw, "cache_creation"); cc.IsObject() {
		u.hasSplit = true
		u.split5m = max(cc.Get("ephemeral_5m_input_tokens").Int(), 0)
		u.split1h = max(cc.Get("ephemeral_1h_input_tokens").Int(), 0)
	}
	return u
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
	return refFromMessage(u).usage(), strings.Clone(refGet(js, "model").String()), true
}

// bytesOf views s as bytes without copying, as the old wire.StringFieldsLen
// viewed gjson's Raw strings.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

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
	u        rawUsage
	final    bool
}

func (p *refStreamParser) Write(chunk []byte)                 { p.dec.Write(chunk, p) }
func (p *refStreamParser) Usage() (accounting.Usage, bool)    { return p.u.usage(), p.final }
func (p *refStreamParser) Model() string                      { return p.model }
func (p *refStreamParser) OutputTextBytes() int64             { return p.outBytes }
func (p *refStreamParser) Error() (kind, msg string, ok bool) { return p.errKind, p.errMsg, p.hasErr }
func (p *refStreamParser) Dropped() int                       { return p.dec.Dropped() + p.invalid }

func (p *refStreamParser) recordModel(m gjson.Result) {
	if m.Type == gjson.String && m.Str != p.model {
		p.model = strings.Clone(m.Str)
	}
}

func (p *refStreamParser) Event(name, data []byte) {
	js := wire.View(data)
	if !gjson.Valid(js) {
		p.invalid++
		return
	}
	typ := refGet(js, "type").Str
	if typ == "" {
		typ = wire.View(name)
	}
	textLen := func(obj gjson.Result) int64 {
		return wire.StringFieldsLen(bytesOf(obj.Raw), "text", "partial_json", "thinking")
	}
	switch typ {
	case "message_start":
		msg := refGet(js, "message")
		p.recordModel(refGet(msg.Raw, "model"))
		p.u = refFromMessage(refGet(msg.Raw, "usage"))
	case "message_delta":
		if u := refGet(js, "usage"); u.IsObject() {
			p.u.output = max(u.Get("output_tokens").Int(), 0)
			p.u.refOverlay(u)
			p.final = true
		}
	case "content_block_start":
		p.outBytes += textLen(refGet(js, "content_block"))
	case "content_block_delta":
		p.outBytes += textLen(refGet(js, "delta"))
	case "error":
		e := refGet(js, "error")
		if !p.hasErr {
			p.errKind, p.errMsg, p.hasErr = strings.Clone(refGet(e.Raw, "type").String()), strings.Clone(refGet(e.Raw, "message").String()), true
		}
	}
}
