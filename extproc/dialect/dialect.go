// Package dialect names the provider wire formats tokenwarden governs and
// picks one by request path. Each format lives in its own package below
// (anthropic, openai), pure and fuzzed: bytes in, values out. They share the
// toolkit in wire and implement Dialect structurally, so none of them imports
// this package.
package dialect

import (
	"strings"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/openai"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Dialect is one provider API as the gate needs it.
type Dialect interface {
	// Name is the dialect's metric label ("anthropic", "openai").
	Name() string
	// Parse reads a request body once: validates it, estimates its input,
	// and records in the result's Index where later edits go. A malformed
	// body yields an error matching wire.ErrInvalidRequest whose message is
	// meant for the client.
	Parse(body []byte) (wire.Request, error)
	// Edit adds to out the edits that carry out e on body, as Parse read it
	// into req, without reading body again; wire.Apply then applies them in
	// one copy. Edits the API itself needs (a stream that must report usage)
	// are added whatever e says.
	Edit(body []byte, req *wire.Request, e wire.EditRequest, out *wire.Edits) (wire.EditReport, error)
	// UsageFromJSON reads the usage of a complete JSON response; ok is false
	// when there is none (an error body, a truncated body).
	UsageFromJSON(body []byte) (usage accounting.Usage, model string, ok bool)
	// NewStreamParser returns a parser for one SSE response.
	NewStreamParser() wire.StreamParser
	// ErrorBody renders one of tokenwarden's own errors in the API's shape;
	// requestID goes where the API puts its own, if anywhere.
	ErrorBody(kind wire.ErrorKind, dimension, message, requestID string) []byte
	// RequestIDHeader is the response header the API's SDKs read the
	// request id from (their requestID / request_id accessors).
	RequestIDHeader() string
}

// StreamRewriting is implemented by a dialect whose own edits change the
// stream a client receives — the usage chunk tokenwarden makes OpenAI send
// (wire.EditReport.StreamUsageForced) — so that the gate can give the
// client the stream it would have had without them. It is a separate
// interface, not a Dialect method: a dialect whose edits add nothing to
// its responses has nothing to implement.
type StreamRewriting interface {
	// NewStreamRewriter returns the rewriter for one SSE response to a
	// request edited as rep says, or nil when the stream goes through as
	// it is.
	NewStreamRewriter(rep wire.EditReport) wire.StreamRewriter
}

var (
	messages        Dialect = anthropic.Messages{}
	chatCompletions Dialect = openai.ChatCompletions{}

	_ StreamRewriting = openai.ChatCompletions{}
)

// ForPath returns the dialect of a request path, ignoring the query string
// (the Anthropic SDKs' beta client calls /v1/messages?beta=true), or nil
// when tokenwarden does not govern the path.
func ForPath(path string) Dialect {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	switch path {
	case "/v1/messages":
		return messages
	case "/v1/chat/completions":
		return chatCompletions
	}
	return nil
}
