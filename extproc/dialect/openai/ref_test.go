package openai

import (
	"fmt"

	"github.com/tidwall/gjson"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Reference oracles: the multi-pass implementations the single-pass parse
// and edits replaced, kept as they were (renamed ref…) so the fuzz targets
// can hold the new code to them byte for byte. Each edit here re-reads and
// copies the whole body; none of it is used outside tests.

// refMember is where a key sits in a JSON object.
type refMember struct {
	Found      bool
	Start, End int
	InsertAt   int
	Members    int
}

// refFindMember validates obj and locates the value of key among its
// top-level members, rejecting a key present twice.
func refFindMember(obj []byte, key string) (refMember, error) {
	var r wire.Reader
	r.Reset(obj)
	var m refMember
	if r.Peek() != wire.KindObject {
		if r.Peek() == wire.KindInvalid {
			return m, wire.Invalid("request body is not valid JSON")
		}
		return m, wire.Invalid("request body must be a JSON object")
	}
	it := r.Object()
	m.InsertAt = r.Pos()
	for k, ok := r.NextKey(&it); ok; k, ok = r.NextKey(&it) {
		m.Members++
		start, end := r.Skip()
		if string(k) == key {
			if m.Found {
				return m, wire.Invalid(fmt.Sprintf("%s: duplicate key", key))
			}
			m.Found, m.Start, m.End = true, start, end
		}
		m.InsertAt = end
	}
	if !r.End() {
		return m, wire.Invalid("request body is not valid JSON: " + r.Err().Error())
	}
	return m, nil
}

// refSplice returns a new body with b[start:end] replaced by parts.
func refSplice(b []byte, start, end int, parts ...string) []byte {
	n := len(b) - (end - start)
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	out = append(out, b[:start]...)
	for _, p := range parts {
		out = append(out, p...)
	}
	return append(out, b[end:]...)
}

// refSetModel is the old SetModel: find the member, splice a copy.
func refSetModel(body []byte, model string) ([]byte, error) {
	m, err := refFindMember(body, "model")
	if err != nil {
		return nil, err
	}
	if !m.Found {
		return nil, wire.Invalid("model: field required")
	}
	enc := gjson.AppendJSONString(make([]byte, 0, len(model)+2), model)
	return refSplice(body, m.Start, m.End, string(enc)), nil
}

// refForceStreamUsage is the old ForceStreamUsage: two searches, one copy.
func refForceStreamUsage(body []byte) (out []byte, changed bool, err error) {
	m, err := refFindMember(body, "stream_options")
	if err != nil {
		return nil, false, err
	}
	if !m.Found {
		sep := ","
		if m.Members == 0 {
			sep = ""
		}
		return refSplice(body, m.InsertAt, m.InsertAt, sep, `"stream_options":{"include_usage":true}`), true, nil
	}
	opts := body[m.Start:m.End]
	if string(opts) == "null" {
		return refSplice(body, m.Start, m.End, `{"include_usage":true}`), true, nil
	}
	if opts[0] != '{' {
		return nil, false, wire.Invalid("stream_options: must be an object")
	}
	inc, err := refFindMember(opts, "include_usage")
	if err != nil {
		return nil, false, wire.Within("stream_options", err)
	}
	if !inc.Found {
		sep := ","
		if inc.Members == 0 {
			sep = ""
		}
		at := m.Start + inc.InsertAt
		return refSplice(body, at, at, sep, `"include_usage":true`), true, nil
	}
	if string(opts[inc.Start:inc.End]) == "true" {
		return body, false, nil
	}
	return refSplice(body, m.Start+inc.Start, m.Start+inc.End, "true"), true, nil
}

// refEdit is the old ChatCompletions.Edit, returning the body it built:
// SetModel, then ForceStreamUsage on the result.
func refEdit(body []byte, req *wire.Request, e wire.EditRequest) ([]byte, wire.EditReport, error) {
	var rep wire.EditReport
	cur := body
	if e.Model != "" && e.Model != req.Model {
		b, err := refSetModel(cur, e.Model)
		if err != nil {
			return nil, rep, err
		}
		cur = b
	}
	if req.Stream && !req.StreamUsageRequested {
		b, changed, err := refForceStreamUsage(cur)
		if err != nil {
			return nil, rep, err
		}
		cur, rep.StreamUsageForced = b, changed
	}
	return cur, rep, nil
}

// refParseRequest is ParseRequest before it recorded the Index and the
// prefix fingerprint: the fuzz targets check that validation, messages and
// the estimate did not move.
func refParseRequest(body []byte) (wire.Request, error) {
	var (
		req                 wire.Request
		r                   wire.Reader
		c                   wire.TokenCounter
		seen                wire.KeySet
		maxTokens, maxCompl int64
		haveCompl           bool
		haveModel, haveMsgs bool
	)
	r.Reset(body)
	if err := wire.ExpectObject(&r); err != nil {
		return req, err
	}
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if err := seen.Add(key); err != nil {
			return req, wire.Fail(&r, err)
		}
		var err error
		switch string(key) {
		case "model":
			req.Model, _, err = wire.ReadModel(&r)
			haveModel = true
		case "max_tokens":
			maxTokens, err = wire.ReadMaxTokens(&r, "max_tokens")
		case "max_completion_tokens":
			haveCompl = r.Peek() != wire.KindNull
			maxCompl, err = wire.ReadMaxTokens(&r, "max_completion_tokens")
		case "stream":
			req.Stream, err = wire.ReadOptionalBool(&r, "stream")
		case "stream_options":
			req.StreamUsageRequested, err = refReadStreamOptions(&r)
		case "messages":
			haveMsgs = true
			req.Messages, err = refEstimateMessages(&r, &c, messageMember)
		case "tools", "functions":
			var n int
			n, err = wire.EstimateTools(&r, &c)
			req.HasTools = req.HasTools || n > 0
		default:
			r.Skip()
		}
		if err != nil {
			return req, wire.Fail(&r, err)
		}
	}
	if err := wire.Finish(&r, haveModel, haveMsgs); err != nil {
		return req, err
	}
	req.MaxTokens = maxTokens
	if haveCompl {
		req.MaxTokens = maxCompl
	}
	req.InputTokens = c.Tokens() + wire.RequestOverheadTokens
	return req, nil
}

func refReadStreamOptions(r *wire.Reader) (bool, error) {
	if r.Null() {
		return false, nil
	}
	if r.Peek() != wire.KindObject {
		return false, wire.Invalid("stream_options: must be an object")
	}
	include := false
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if string(key) != "include_usage" {
			r.Skip()
			continue
		}
		v, err := wire.ReadOptionalBool(r, "stream_options.include_usage")
		if err != nil {
			return false, err
		}
		include = v
	}
	return include, nil
}

// refEstimateMessages is the old wire.EstimateMessages.
func refEstimateMessages(r *wire.Reader, c *wire.TokenCounter, member func(r *wire.Reader, c *wire.TokenCounter, key []byte) error) (int, error) {
	if r.Peek() != wire.KindArray {
		return 0, wire.Invalid("messages: must be an array")
	}
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() != wire.KindObject {
			return n, wire.Invalid(fmt.Sprintf("messages.%d: must be an object", n))
		}
		c.AddTokens(wire.MessageOverheadTokens)
		mit := r.Object()
		for key, ok := r.NextKey(&mit); ok; key, ok = r.NextKey(&mit) {
			if err := member(r, c, key); err != nil {
				return n, wire.Within(fmt.Sprintf("messages.%d", n), err)
			}
		}
		n++
	}
	return n, nil
}
