package openai

import (
	"fmt"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Embeddings is the embeddings API (POST /v1/embeddings,
// https://platform.openai.com/docs/api-reference/embeddings) as the gate
// uses it; it implements dialect.Dialect. It generates no output tokens,
// does not stream and has no prompt cache: a request costs its input,
// reported as usage.prompt_tokens.
type Embeddings struct{}

// Name implements dialect.Dialect.
func (Embeddings) Name() string { return "openai_embeddings" }

// Parse implements dialect.Dialect with ParseEmbeddingsRequest.
func (Embeddings) Parse(body []byte) (wire.Request, error) { return ParseEmbeddingsRequest(body) }

// Edit implements dialect.Dialect: a model rewrite, from the Index Parse
// recorded.
func (Embeddings) Edit(_ []byte, req *wire.Request, e wire.EditRequest, out *wire.Edits) (wire.EditReport, error) {
	var rep wire.EditReport
	if e.Model != "" && e.Model != req.Model {
		return rep, wire.EditModel(&req.Index, e.Model, out)
	}
	return rep, nil
}

// UsageFromJSON implements dialect.Dialect. An embeddings response's usage
// ({"prompt_tokens":..,"total_tokens":..}) is read as Chat Completions'
// usage is: prompt_tokens is the input, and there is no output.
func (Embeddings) UsageFromJSON(body []byte) (accounting.Usage, string, bool) {
	return UsageFromJSON(body)
}

// NewStreamParser implements dialect.Dialect. The API never streams; a
// server that does anyway is read as a Chat Completions stream, whose usage
// chunk has the same shape.
func (Embeddings) NewStreamParser() wire.StreamParser { return NewStreamParser() }

// ErrorBody implements dialect.Dialect, in Chat Completions' shape.
func (Embeddings) ErrorBody(kind wire.ErrorKind, dimension, message, _ string) []byte {
	return errorBody(kind, dimension, message)
}

// RequestIDHeader implements dialect.Dialect, as for Chat Completions.
func (Embeddings) RequestIDHeader() string { return "x-request-id" }

// ParseEmbeddingsRequest reads an embeddings request body in one pass:
// model and input (both required) and estimates the input tokens. input is
// a string, an array of strings, an array of token ids, or an array of
// arrays of token ids (https://platform.openai.com/docs/api-reference/embeddings/create#embeddings-create-input):
// strings are estimated like any text, token ids count one each — exactly
// what the provider bills. Messages is the number of inputs embedded.
// Malformed bodies yield an error matching wire.ErrInvalidRequest.
func ParseEmbeddingsRequest(body []byte) (wire.Request, error) {
	var (
		req                  wire.Request
		r                    wire.Reader
		c                    wire.TokenCounter
		seen                 wire.KeySet
		haveModel, haveInput bool
	)
	req.NoOutput = true
	r.Reset(body)
	if err := wire.ExpectObject(&r); err != nil {
		return req, err
	}
	it := r.Object()
	req.Index.Append = wire.Insertion{At: r.Pos()}
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if err := seen.Add(key); err != nil {
			return req, wire.Fail(&r, err)
		}
		var err error
		switch string(key) {
		case "model":
			haveModel = true
			req.Model, req.Index.Model, err = wire.ReadModel(&r)
		case "input":
			haveInput = true
			req.Messages, err = estimateEmbeddingInput(&r, &c)
		default:
			r.Skip()
		}
		if err != nil {
			return req, wire.Fail(&r, err)
		}
		req.Index.Append = wire.Insertion{At: r.Pos(), Comma: true}
	}
	if err := wire.End(&r); err != nil {
		return req, err
	}
	if !haveModel {
		return req, wire.Invalid("model: field required")
	}
	if !haveInput {
		return req, wire.Invalid("input: field required")
	}
	req.InputTokens = c.Tokens()
	return req, nil
}

// estimateEmbeddingInput consumes input and returns how many inputs it
// holds.
func estimateEmbeddingInput(r *wire.Reader, c *wire.TokenCounter) (int, error) {
	switch r.Peek() {
	case wire.KindString:
		r.EstimateString(c)
		return 1, nil
	case wire.KindArray:
	default:
		return 0, wire.Invalid("input: must be a string, an array of strings or an array of token arrays")
	}
	n, ids := 0, 0
	it := r.Array()
	for r.NextElem(&it) {
		switch r.Peek() {
		case wire.KindString:
			r.EstimateString(c)
			n++
		case wire.KindNumber:
			// One array of token ids is one input.
			if msg := readTokenID(r); msg != "" {
				return n, wire.Invalid(fmt.Sprintf("input.%d: %s", ids, msg))
			}
			c.AddTokens(1)
			ids++
		case wire.KindArray:
			k := 0
			tit := r.Array()
			for r.NextElem(&tit) {
				if msg := readTokenID(r); msg != "" {
					return n, wire.Invalid(fmt.Sprintf("input.%d.%d: %s", n, k, msg))
				}
				k++
			}
			c.AddTokens(int64(k))
			n++
		default:
			return n, wire.Invalid(fmt.Sprintf("input.%d: must be a string or an array of token ids", n+ids))
		}
	}
	if ids > 0 {
		n++
	}
	return n, nil
}

// readTokenID consumes one token id, a non-negative integer, and returns
// what is wrong with it ("" when nothing is), so that the error's text is
// built only for a bad body.
func readTokenID(r *wire.Reader) string {
	if r.Peek() != wire.KindNumber {
		return "must be an integer token id"
	}
	v, isInt := r.Int()
	if r.Err() != nil {
		return "" // reported by End
	}
	if !isInt || v < 0 {
		return "must be a non-negative integer token id"
	}
	return ""
}
