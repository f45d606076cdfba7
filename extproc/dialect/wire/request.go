// Package wire holds what the provider dialects (extproc/dialect/anthropic,
// extproc/dialect/openai) have in common: the parsed view of a request and
// the index of where its edits go, the streaming usage parser contract, the
// client-facing request error, a fast token estimator, the edit splicer, and
// the two zero-allocation readers the dialects build on (a validating JSON
// reader and an SSE event decoder).
//
// Everything here is pure: bytes in, values out, no I/O. It sits on the hot
// path of every request, so the readers never copy the body and never
// allocate per message or per event.
package wire

import (
	"errors"
	"strings"

	"github.com/tokenwarden/tokenwarden/accounting"
)

// Request is what the processor needs to know about one LLM request, read in
// a single pass over the body.
type Request struct {
	// Model is the requested model exactly as the client sent it.
	Model string
	// MaxTokens is the output bound: max_tokens (Anthropic),
	// max_completion_tokens and else max_tokens (OpenAI Chat),
	// max_output_tokens (OpenAI Responses), generationConfig.maxOutputTokens
	// (Gemini); 0 if absent.
	MaxTokens int64
	// Stream reports "stream": true, or (Gemini) a streamGenerateContent
	// path.
	Stream bool
	// Background reports a Responses API request with "background": true:
	// the provider answers at once and generates later, so the answer to
	// this request carries no usage.
	Background bool
	// NoOutput reports an API that generates no output tokens (embeddings):
	// nothing is reserved for output.
	NoOutput bool
	// InputTokens estimates every input token the provider will bill: system,
	// messages (text, tool calls and results, thinking), tool definitions and
	// media, plus framing overhead. See EstimateTokens for the heuristic; it is
	// a reservation that settlement corrects, so it errs high.
	InputTokens int64
	// HasTools reports a non-empty tool (or legacy function) list.
	HasTools bool
	// Messages is the number of entries in "messages" (Responses: of
	// "input", a string counting one; Gemini: of "contents").
	Messages int
	// StreamUsageRequested reports (OpenAI) that stream_options.include_usage
	// is already true, so the body needs no rewrite to get a usage chunk.
	StreamUsageRequested bool
	// PrefixFingerprint, when HasPrefix, hashes the raw bytes of the stable
	// prompt prefix (Anthropic: system and tools; OpenAI: tools, functions and
	// the leading system and developer messages), taken during the same pass,
	// so watching prefix changes costs no second pass over the body.
	PrefixFingerprint uint64
	HasPrefix         bool
	// Index is where the same pass found what the edits change, for the
	// dialect's Edit.
	Index Index
}

// StreamParser consumes a streamed (SSE) response body incrementally and
// keeps the best usage known so far. Implementations tolerate chunks split at
// any byte and never retain the chunks they are given.
type StreamParser interface {
	// Write feeds one response-body chunk of arbitrary size and boundaries.
	Write(chunk []byte)
	// Usage returns the best usage known so far; final reports that the
	// provider's final usage has been seen (the stream may still be settled
	// from a non-final usage, marked as estimated, when it is cut).
	Usage() (usage accounting.Usage, final bool)
	// Model returns the model the provider reported, or "" if not yet seen.
	Model() string
	// OutputTextBytes returns the decoded bytes of generated text, tool-call
	// input and thinking streamed so far, for estimating the output of a
	// stream cut before its usage arrived.
	OutputTextBytes() int64
	// Error returns the first mid-stream error event, if any.
	Error() (kind, message string, ok bool)
}

// ErrInvalidRequest is matched (errors.Is) by every *RequestError.
var ErrInvalidRequest = errors.New("invalid request")

// RequestError is a malformed request body. Its message is meant for the
// client: the processor returns it verbatim in the dialect's 400 body, so it
// names the offending field and never echoes body content.
type RequestError struct {
	Msg string
}

// Error returns the client-facing message.
func (e *RequestError) Error() string { return e.Msg }

// Is makes errors.Is(err, ErrInvalidRequest) true for every RequestError.
func (e *RequestError) Is(target error) bool { return target == ErrInvalidRequest }

// Invalid returns a *RequestError with the given client-facing message.
func Invalid(msg string) error { return &RequestError{Msg: msg} }

// Within returns err with its client-facing message qualified by the path
// of the value it concerns: "content: must be…" within "messages.3" reads
// "messages.3.content: must be…". Other errors are returned as they are.
func Within(path string, err error) error {
	var re *RequestError
	if !errors.As(err, &re) {
		return err
	}
	if i := strings.Index(re.Msg, ": "); i > 0 && !strings.ContainsRune(re.Msg[:i], ' ') {
		return &RequestError{Msg: path + "." + re.Msg}
	}
	return &RequestError{Msg: path + ": " + re.Msg}
}
