package wire

// ErrorKind is an error tokenwarden answers itself, which each dialect
// renders in its API's own error shape so the client's SDK raises the
// exception it would for the provider's own answer.
type ErrorKind int

const (
	ErrorInvalidRequest  ErrorKind = iota // 400: a malformed or refused request
	ErrorRateLimited                      // 429: requests, tokens or concurrency
	ErrorBudget                           // 429: a budget window is spent
	ErrorUnavailable                      // 503: the store is down and the policy fails closed
	ErrorInternal                         // 500: tokenwarden's own fault
	ErrorUnauthenticated                  // 401: the caller could not be identified
	ErrorForbidden                        // 403: the caller may not use this
	ErrorMediaType                        // 415: a request body in a content coding tokenwarden does not read
)
