package openai

import "github.com/tokenwarden/tokenwarden/extproc/dialect/wire"

// Error types and codes of the Chat Completions error body.
const (
	InvalidRequestError = "invalid_request_error" // type, 400/404
	InsufficientQuota   = "insufficient_quota"    // type and code, 429 (not retryable)
	TokensError         = "tokens"                // type of a 429 on a tokens-per-minute limit
	RequestsError       = "requests"              // type of a 429 on a requests-per-minute limit
	ServerError         = "server_error"          // type, 5xx

	RateLimitExceeded    = "rate_limit_exceeded"   // code, 429
	ModelNotFound        = "model_not_found"       // code, 404
	UnsupportedParameter = "unsupported_parameter" // code, 400
)

// ErrorBody builds {"error":{"message":..,"type":..,"param":..,"code":..}}.
// An empty code, and a missing or empty param, are written as null, as the
// API does.
func ErrorBody(errType, code, message string, param ...string) []byte {
	b := make([]byte, 0, 64+len(errType)+len(code)+len(message))
	b = append(b, `{"error":{"message":`...)
	b = wire.AppendJSONString(b, message)
	b = append(b, `,"type":`...)
	b = wire.AppendJSONString(b, errType)
	b = append(b, `,"param":`...)
	b = appendOrNull(b, firstOf(param))
	b = append(b, `,"code":`...)
	b = appendOrNull(b, code)
	return append(b, "}}"...)
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func appendOrNull(b []byte, s string) []byte {
	if s == "" {
		return append(b, "null"...)
	}
	return wire.AppendJSONString(b, s)
}
