package openai

import (
	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Responses is the Responses API (POST /v1/responses and
// /v1/responses/compact) as the gate uses it; it implements
// dialect.Dialect. It shares Chat Completions' error shape and request id
// header, which is why it lives in this package.
type Responses struct{}

// Name implements dialect.Dialect.
func (Responses) Name() string { return "openai_responses" }

// Parse implements dialect.Dialect with ParseResponsesRequest.
func (Responses) Parse(body []byte) (wire.Request, error) { return ParseResponsesRequest(body) }

// Edit implements dialect.Dialect: a model rewrite and, where e.Cache asks
// and the model takes them (gpt-5.6 and later), explicit prompt-cache
// breakpoints (cache.go), from the Index Parse recorded. Every response
// reports its usage, streamed or not, so nothing needs forcing.
func (Responses) Edit(_ []byte, req *wire.Request, e wire.EditRequest, out *wire.Edits) (wire.EditReport, error) {
	rep, err := editModelAndCache(req, e, "input", inputTextOpen, out)
	if err != nil || e.OutputLimit <= 0 {
		return rep, err
	}
	// max_output_tokens bounds reasoning and visible output together
	// (https://platform.openai.com/docs/api-reference/responses/create#responses-create-max_output_tokens).
	return rep, wire.EditOutputLimit(&req.Index.OutputLimit, req.Index.Append, "max_output_tokens", e.OutputLimit, out)
}

// UsageFromJSON implements dialect.Dialect with ResponsesUsageFromJSON.
func (Responses) UsageFromJSON(body []byte) (accounting.Usage, string, bool) {
	return ResponsesUsageFromJSON(body)
}

// NewStreamParser implements dialect.Dialect.
func (Responses) NewStreamParser() wire.StreamParser { return NewResponsesStreamParser() }

// ErrorBody implements dialect.Dialect: the Responses API answers errors
// in Chat Completions' shape.
func (Responses) ErrorBody(kind wire.ErrorKind, dimension, message, _ string) []byte {
	return errorBody(kind, dimension, message)
}

// RequestIDHeader implements dialect.Dialect, as for Chat Completions.
func (Responses) RequestIDHeader() string { return "x-request-id" }
