package extproc

import (
	"strings"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/openai"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// errorKind is a gateway-generated error, rendered in each dialect's shape.
type errorKind int

const (
	errInvalidRequest errorKind = iota // 400
	errRateLimited                     // 429 for requests/tokens/concurrency
	errBudget                          // 429 for an exhausted budget
	errUnavailable                     // 503: the store is down and the policy fails closed
	errInternal                        // 500: tokenwarden's own fault
)

// dialect is one provider wire format, chosen by the request path.
type dialect interface {
	name() string
	parse(body []byte) (wire.Request, error)
	setModel(body []byte, model string) ([]byte, error)
	// prepare makes the provider-side changes every request of this dialect
	// needs (OpenAI streams must report usage); changed=false means body is
	// returned as is.
	prepare(body []byte, req *wire.Request) (out []byte, changed bool, err error)
	usageFromJSON(body []byte) (accounting.Usage, bool)
	// injectCache adds prompt-cache breakpoints where the dialect has them.
	injectCache(body []byte, model string, pc policy.PromptCache) (out []byte, changed bool, err error)
	// prefixFingerprint hashes the stable prompt prefix (tools, system).
	prefixFingerprint(body []byte, req *wire.Request) (uint64, bool)
	newStreamParser() wire.StreamParser
	errorBody(kind errorKind, dimension, message string) []byte
}

var (
	anthropicDialect dialect = anthropicWire{}
	openaiDialect    dialect = openaiWire{}
)

// dialectFor picks the wire format by path, ignoring the query string (the
// Anthropic SDKs' beta client calls /v1/messages?beta=true).
func dialectFor(path string) dialect {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	switch path {
	case "/v1/messages":
		return anthropicDialect
	case "/v1/chat/completions":
		return openaiDialect
	}
	return nil
}

type anthropicWire struct{}

func (anthropicWire) name() string                                { return "anthropic" }
func (anthropicWire) parse(b []byte) (wire.Request, error)        { return anthropic.ParseRequest(b) }
func (anthropicWire) setModel(b []byte, m string) ([]byte, error) { return anthropic.SetModel(b, m) }
func (anthropicWire) prepare(b []byte, _ *wire.Request) ([]byte, bool, error) {
	return b, false, nil
}
func (anthropicWire) usageFromJSON(b []byte) (accounting.Usage, bool) {
	u, _, ok := anthropic.UsageFromJSON(b)
	return u, ok
}
func (anthropicWire) newStreamParser() wire.StreamParser { return anthropic.NewStreamParser() }
func (anthropicWire) injectCache(b []byte, model string, pc policy.PromptCache) ([]byte, bool, error) {
	out, res, err := anthropic.InjectCacheControl(b, anthropic.CacheOptions{TTL: pc.TTL, MinTokens: anthropic.DefaultMinCacheTokens(model)})
	return out, res.Changed, err
}

// The parse already hashed system and tools on its single pass.
func (anthropicWire) prefixFingerprint(_ []byte, req *wire.Request) (uint64, bool) {
	return req.PrefixFingerprint, req.HasPrefix
}
func (anthropicWire) errorBody(kind errorKind, _ string, msg string) []byte {
	t := anthropic.InvalidRequestError
	switch kind {
	case errRateLimited, errBudget:
		t = anthropic.RateLimitError
	case errUnavailable, errInternal:
		t = anthropic.APIError
	}
	return anthropic.ErrorBody(t, msg, "")
}

type openaiWire struct{}

func (openaiWire) name() string                                { return "openai" }
func (openaiWire) parse(b []byte) (wire.Request, error)        { return openai.ParseRequest(b) }
func (openaiWire) setModel(b []byte, m string) ([]byte, error) { return openai.SetModel(b, m) }
func (openaiWire) prepare(b []byte, req *wire.Request) ([]byte, bool, error) {
	if !req.Stream || req.StreamUsageRequested {
		return b, false, nil
	}
	return openai.ForceStreamUsage(b)
}
func (openaiWire) usageFromJSON(b []byte) (accounting.Usage, bool) {
	u, _, ok := openai.UsageFromJSON(b)
	return u, ok
}
func (openaiWire) newStreamParser() wire.StreamParser { return openai.NewStreamParser() }

// OpenAI caches prompt prefixes automatically; there is nothing to mark.
func (openaiWire) injectCache(b []byte, _ string, _ policy.PromptCache) ([]byte, bool, error) {
	return b, false, nil
}
func (openaiWire) prefixFingerprint(b []byte, _ *wire.Request) (uint64, bool) {
	return openai.PrefixFingerprint(b)
}
func (openaiWire) errorBody(kind errorKind, dimension, msg string) []byte {
	switch kind {
	case errRateLimited:
		// OpenAI's own 429s say which limit in "type": requests or tokens.
		typ := "requests"
		if dimension == "tokens" {
			typ = "tokens"
		}
		return openai.ErrorBody(typ, "rate_limit_exceeded", msg)
	case errBudget:
		return openai.ErrorBody("insufficient_quota", "insufficient_quota", msg)
	case errUnavailable:
		return openai.ErrorBody("server_error", "service_unavailable", msg)
	case errInternal:
		return openai.ErrorBody("server_error", "", msg)
	}
	return openai.ErrorBody("invalid_request_error", "", msg)
}
