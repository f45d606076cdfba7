package anthropic

import "github.com/tokenwarden/tokenwarden/extproc/dialect/wire"

// Error types of the Messages API error body, by the HTTP status that
// carries them.
const (
	InvalidRequestError = "invalid_request_error" // 400, and other 4xx not listed
	AuthenticationError = "authentication_error"  // 401
	BillingError        = "billing_error"         // 402
	PermissionError     = "permission_error"      // 403
	NotFoundError       = "not_found_error"       // 404
	RequestTooLarge     = "request_too_large"     // 413
	RateLimitError      = "rate_limit_error"      // 429
	APIError            = "api_error"             // 500
	TimeoutError        = "timeout_error"         // 504
	OverloadedError     = "overloaded_error"      // 529
)

// ErrorBody builds {"type":"error","error":{"type":..,"message":..},
// "request_id":..}, omitting request_id when empty; the SDKs parse this
// shape into their typed exceptions.
func ErrorBody(errType, message, requestID string) []byte {
	b := make([]byte, 0, 64+len(errType)+len(message)+len(requestID))
	b = append(b, `{"type":"error","error":{"type":`...)
	b = wire.AppendJSONString(b, errType)
	b = append(b, `,"message":`...)
	b = wire.AppendJSONString(b, message)
	b = append(b, '}')
	if requestID != "" {
		b = append(b, `,"request_id":`...)
		b = wire.AppendJSONString(b, requestID)
	}
	return append(b, '}')
}
