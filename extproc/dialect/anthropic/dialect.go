package anthropic

import (
	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Messages is the Messages API (/v1/messages) as the gate uses it; it
// implements dialect.Dialect.
type Messages struct{}

// Name implements dialect.Dialect.
func (Messages) Name() string { return "anthropic" }

// Parse implements dialect.Dialect with ParseRequest.
func (Messages) Parse(body []byte) (wire.Request, error) { return ParseRequest(body) }

// Edit implements dialect.Dialect: a model rewrite and prompt-cache
// breakpoints, from the Index Parse recorded.
func (Messages) Edit(_ []byte, req *wire.Request, e wire.EditRequest, out *wire.Edits) (wire.EditReport, error) {
	return planEdits(req, e, out)
}

// UsageFromJSON implements dialect.Dialect.
func (Messages) UsageFromJSON(body []byte) (accounting.Usage, string, bool) {
	return UsageFromJSON(body)
}

// NewStreamParser implements dialect.Dialect.
func (Messages) NewStreamParser() wire.StreamParser { return NewStreamParser() }

// ErrorBody implements dialect.Dialect.
func (Messages) ErrorBody(kind wire.ErrorKind, _, message, requestID string) []byte {
	t := InvalidRequestError
	switch kind {
	case wire.ErrorRateLimited, wire.ErrorBudget:
		t = RateLimitError
	case wire.ErrorUnavailable, wire.ErrorInternal:
		t = APIError
	case wire.ErrorUnauthenticated:
		t = AuthenticationError
	case wire.ErrorForbidden:
		t = PermissionError
	case wire.ErrorMediaType:
		// The errors page has no 415; invalid_request_error covers "other
		// 4XX status codes not listed" (https://docs.anthropic.com/en/api/errors).
		t = InvalidRequestError
	}
	return ErrorBody(t, message, requestID)
}

// RequestIDHeader implements dialect.Dialect: the SDKs read request-id
// (https://docs.anthropic.com/en/api/errors, "Request id").
func (Messages) RequestIDHeader() string { return "request-id" }
