// Package dialect names the provider wire formats tokenwarden governs and
// picks one by request path. Each format lives in its own package below
// (anthropic, openai, gemini), pure and fuzzed: bytes in, values out. They
// share the toolkit in wire and implement Dialect structurally, so none of
// them imports this package.
//
// The governed surfaces, by path (POST only; the query is ignored):
//
//	/v1/messages                                   anthropic          Messages
//	/v1/chat/completions                           openai             Chat Completions
//	/v1/responses, /v1/responses/compact           openai_responses   Responses
//	/v1/embeddings                                 openai_embeddings  embeddings
//	/v1beta/models/{model}:generateContent         gemini             generateContent
//	/v1beta/models/{model}:streamGenerateContent   gemini             (also under /v1/models/)
package dialect

import (
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/gemini"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/openai"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Dialect is one provider API as the gate needs it.
type Dialect interface {
	// Name is the dialect's metric label ("anthropic", "openai",
	// "openai_responses", "openai_embeddings", "gemini").
	Name() string
	// Parse reads a request body once: validates it, estimates its input,
	// and records in the result's Index where later edits go. A malformed
	// body yields an error matching wire.ErrInvalidRequest whose message is
	// meant for the client.
	Parse(body []byte) (wire.Request, error)
	// Edit adds to out the edits that carry out e on body, as Parse read it
	// into req, without reading body again; wire.Apply then applies them in
	// one copy. Edits the API itself needs (a stream that must report usage)
	// are added whatever e says. An API that names the model in the path
	// (Gemini) rewrites it by returning the new path in the report's Path.
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

// LimitReading is implemented by a dialect whose provider reports its own
// rate limits in response headers (Anthropic's anthropic-ratelimit-*,
// OpenAI's x-ratelimit-*). A separate interface, like StreamRewriting: a
// provider that sends none (Gemini) has nothing to implement.
type LimitReading interface {
	// ProviderLimits reads the provider's limits and retry hint from one
	// response's headers; the zero value when it sent none.
	ProviderLimits(get wire.HeaderGetter, now time.Time) wire.ProviderLimits
}

var (
	messages        Dialect = anthropic.Messages{}
	chatCompletions Dialect = openai.ChatCompletions{}
	responses       Dialect = openai.Responses{}
	embeddings      Dialect = openai.Embeddings{}

	_ StreamRewriting = openai.ChatCompletions{}
	_ LimitReading    = anthropic.Messages{}
	_ LimitReading    = openai.ChatCompletions{}
	_ LimitReading    = openai.Responses{}
	_ LimitReading    = openai.Embeddings{}
)

// ForPath returns the dialect of a request path, ignoring the query string
// (the SDKs' beta clients call /v1/messages?beta=true and
// /v1/responses?beta=true), or nil when tokenwarden does not govern the
// path. A Gemini path names the model: its dialect is bound to that path,
// so Parse reads the model from it and a model rewrite becomes a new path
// (see gemini.GenerateContent).
func ForPath(path string) Dialect {
	p := path
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	switch p {
	case "/v1/messages":
		return messages
	case "/v1/chat/completions":
		return chatCompletions
	case "/v1/responses", "/v1/responses/compact":
		return responses
	case "/v1/embeddings":
		return embeddings
	}
	if g, ok := gemini.ForPath(path); ok {
		return g
	}
	return nil
}
