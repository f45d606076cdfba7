package openai

import (
	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// ChatCompletions is the Chat Completions API (/v1/chat/completions) as the
// gate uses it; it implements dialect.Dialect.
type ChatCompletions struct{}

// Name implements dialect.Dialect.
func (ChatCompletions) Name() string { return "openai" }

// Parse implements dialect.Dialect with ParseRequest.
func (ChatCompletions) Parse(body []byte) (wire.Request, error) { return ParseRequest(body) }

// Edit implements dialect.Dialect: a model rewrite,
// stream_options.include_usage on a stream that does not ask for usage and,
// where e.Cache asks and the model takes them (gpt-5.6 and later), explicit
// prompt-cache breakpoints (cache.go), from the Index Parse recorded. Older
// models cache prompt prefixes automatically; e.Cache adds nothing there.
func (ChatCompletions) Edit(_ []byte, req *wire.Request, e wire.EditRequest, out *wire.Edits) (wire.EditReport, error) {
	return planEdits(req, e, out)
}

// UsageFromJSON implements dialect.Dialect.
func (ChatCompletions) UsageFromJSON(body []byte) (accounting.Usage, string, bool) {
	return UsageFromJSON(body)
}

// NewStreamParser implements dialect.Dialect.
func (ChatCompletions) NewStreamParser() wire.StreamParser { return NewStreamParser() }

// ErrorBody implements dialect.Dialect with errorBody.
func (ChatCompletions) ErrorBody(kind wire.ErrorKind, dimension, message, _ string) []byte {
	return errorBody(kind, dimension, message)
}

// errorBody renders one of tokenwarden's errors in the shape every OpenAI
// API shares (https://platform.openai.com/docs/guides/error-codes). OpenAI's
// own 429s say which limit in "type": requests or tokens.
func errorBody(kind wire.ErrorKind, dimension, message string) []byte {
	switch kind {
	case wire.ErrorRateLimited:
		typ := "requests"
		if dimension == "tokens" {
			typ = "tokens"
		}
		return ErrorBody(typ, "rate_limit_exceeded", message)
	case wire.ErrorBudget:
		return ErrorBody("insufficient_quota", "insufficient_quota", message)
	case wire.ErrorUnavailable:
		return ErrorBody("server_error", "service_unavailable", message)
	case wire.ErrorInternal:
		return ErrorBody("server_error", "", message)
	case wire.ErrorUnauthenticated:
		return ErrorBody("invalid_request_error", "invalid_api_key", message)
	case wire.ErrorForbidden:
		return ErrorBody("invalid_request_error", "permission_denied", message)
	case wire.ErrorMediaType:
		// A request OpenAI cannot read is an invalid_request_error; the
		// status (415) says why, the code is left null as OpenAI's own
		// body-parsing errors leave it.
		return ErrorBody("invalid_request_error", "", message)
	}
	return ErrorBody("invalid_request_error", "", message)
}

// RequestIDHeader implements dialect.Dialect: the SDKs read x-request-id
// (https://platform.openai.com/docs/api-reference/debugging-requests).
func (ChatCompletions) RequestIDHeader() string { return "x-request-id" }

// NewStreamRewriter implements dialect.StreamRewriting: a stream whose
// usage chunk tokenwarden asked for (rep.StreamUsageForced: the client did
// not ask, or sent include_usage: false) reaches the client without it, as
// OpenAI would have sent it (UsageChunkRemover); otherwise nil, and the
// stream goes through untouched.
func (ChatCompletions) NewStreamRewriter(rep wire.EditReport) wire.StreamRewriter {
	if !rep.StreamUsageForced {
		return nil
	}
	return &UsageChunkRemover{}
}
