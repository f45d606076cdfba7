// Package gemini is the Gemini API's native generateContent wire format
// (https://ai.google.dev/api/generate-content): parse and estimate a
// request, rewrite its model (which the API names in the path, not the
// body), extract usage from a JSON response, a JSON array of chunks or an
// SSE stream, and build the error body. Pure: bytes in, values and bytes
// out.
package gemini

import (
	"net/url"
	"strconv"
	"strings"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// GenerateContent is one generateContent or streamGenerateContent call as
// the gate uses it; it implements dialect.Dialect. The Gemini API names
// the model in the path (POST /v1beta/models/{model}:generateContent), so a
// value is bound to the path it was found for, by ForPath: Parse reports
// that model, and Edit rewrites it by giving the gate a new path.
type GenerateContent struct {
	prefix string // "/v1beta/models/"
	model  string // decoded from the path
	bad    bool   // the path's model is not valid percent-encoding
	method string // "generateContent" or "streamGenerateContent"
	query  string // "?alt=sse…", kept as sent
	stream bool
}

// The API versions whose model paths are governed: the Gemini API serves
// v1beta (what the SDKs call) and v1.
var modelPrefixes = [...]string{"/v1beta/models/", "/v1/models/"}

// ForPath returns the call a request path names, query included, and
// whether it is one: {prefix}{model}:generateContent or
// {prefix}{model}:streamGenerateContent. The query is ignored for routing;
// ?alt=sse only selects SSE framing of the stream
// (https://ai.google.dev/gemini-api/docs/text-generation), which the
// response's content-type tells the gate anyway.
func ForPath(path string) (GenerateContent, bool) {
	p, q := path, ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		p, q = path[:i], path[i:]
	}
	for _, prefix := range modelPrefixes {
		rest, ok := strings.CutPrefix(p, prefix)
		if !ok {
			continue
		}
		i := strings.LastIndexByte(rest, ':')
		if i <= 0 || strings.IndexByte(rest[:i], '/') >= 0 {
			return GenerateContent{}, false
		}
		g := GenerateContent{prefix: prefix, method: rest[i+1:], query: q}
		switch g.method {
		case "generateContent":
		case "streamGenerateContent":
			g.stream = true
		default:
			return GenerateContent{}, false
		}
		m, err := url.PathUnescape(rest[:i])
		g.model, g.bad = m, err != nil
		return g, true
	}
	return GenerateContent{}, false
}

// Name implements dialect.Dialect.
func (GenerateContent) Name() string { return "gemini" }

// Parse implements dialect.Dialect: ParseRequest, with the model and
// streaming taken from the path.
func (g GenerateContent) Parse(body []byte) (wire.Request, error) {
	switch {
	case g.bad:
		return wire.Request{}, wire.Invalid("model: the path's model is not valid percent-encoding")
	case g.model == "":
		return wire.Request{}, wire.Invalid("model: the path names no model")
	}
	if err := wire.ValidModel(g.model); err != nil {
		return wire.Request{}, err
	}
	req, bodyModel, err := parseRequest(body)
	if err != nil {
		return req, err
	}
	// A model in the body as well as the path could be read either way;
	// the path's is the one served.
	if bodyModel != "" && bodyModel != g.model && bodyModel != "models/"+g.model {
		return req, wire.Invalid("model: the body names " + quote(bodyModel) + " but the path " + quote(g.model) + "; name it in the path only")
	}
	req.Model, req.Stream = g.model, g.stream
	return req, nil
}

// Edit implements dialect.Dialect: a model rewrite is a new path, which the
// report carries for the gate to set as :path; the body is not touched.
// Gemini caches prompt prefixes by itself (implicit caching) or through
// cachedContent, so e.Cache adds nothing.
func (g GenerateContent) Edit(_ []byte, req *wire.Request, e wire.EditRequest, out *wire.Edits) (wire.EditReport, error) {
	var rep wire.EditReport
	if e.Model != "" && e.Model != req.Model {
		rep.Path = g.PathFor(e.Model)
	}
	if e.OutputLimit > 0 {
		return rep, editOutputLimit(&req.Index, e.OutputLimit, out)
	}
	return rep, nil
}

// editOutputLimit bounds the output at n tokens in
// generationConfig.maxOutputTokens
// (https://ai.google.dev/api/generate-content#generationconfig), creating
// the member, or the object, where the request has none.
func editOutputLimit(idx *wire.Index, n int64, out *wire.Edits) error {
	ol := &idx.OutputLimit
	num := strconv.FormatInt(n, 10)
	switch {
	case ol.Found():
		return wire.EditOutputLimit(ol, idx.Append, "maxOutputTokens", n, out)
	case ol.NestedFound:
		return wire.InsertMember(ol.Nested, "maxOutputTokens", num, out)
	case ol.NestedNull.Found():
		if !out.Add(ol.NestedNull.Start, ol.NestedNull.End, `{"maxOutputTokens":`+num+`}`) {
			return wire.ErrTooManyEdits
		}
		return nil
	}
	return wire.InsertMember(idx.Append, "generationConfig", `{"maxOutputTokens":`+num+`}`, out)
}

// PathFor returns the call's path with model in place of its own, the
// query kept.
func (g GenerateContent) PathFor(model string) string {
	return g.prefix + url.PathEscape(model) + ":" + g.method + g.query
}

// UsageFromJSON implements dialect.Dialect.
func (GenerateContent) UsageFromJSON(body []byte) (accounting.Usage, string, bool) {
	return UsageFromJSON(body)
}

// NewStreamParser implements dialect.Dialect.
func (GenerateContent) NewStreamParser() wire.StreamParser { return NewStreamParser() }

// ErrorBody implements dialect.Dialect in Google's error shape, with the
// HTTP status and the canonical status name of each kind
// (https://ai.google.dev/gemini-api/docs/troubleshooting#error-codes).
func (GenerateContent) ErrorBody(kind wire.ErrorKind, _, message, _ string) []byte {
	switch kind {
	case wire.ErrorRateLimited, wire.ErrorBudget:
		return ErrorBody(429, "RESOURCE_EXHAUSTED", message)
	case wire.ErrorUnavailable:
		return ErrorBody(503, "UNAVAILABLE", message)
	case wire.ErrorInternal:
		return ErrorBody(500, "INTERNAL", message)
	case wire.ErrorUnauthenticated:
		return ErrorBody(401, "UNAUTHENTICATED", message)
	case wire.ErrorForbidden:
		return ErrorBody(403, "PERMISSION_DENIED", message)
	}
	return ErrorBody(400, "INVALID_ARGUMENT", message)
}

// RequestIDHeader implements dialect.Dialect. The Gemini API's SDKs read no
// request id header, so tokenwarden's id goes under the conventional name,
// for logs.
func (GenerateContent) RequestIDHeader() string { return "x-request-id" }

func quote(s string) string { return string(wire.AppendJSONString(nil, s)) }
