package anthropic

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Message Batches: POST /v1/messages/batches carries every request of the
// batch in its body, {"requests": [{"custom_id": ..., "params": {a Messages
// request}}, ...]}, processed by the provider within 24 hours at half price
// (https://docs.anthropic.com/en/api/creating-message-batches,
// https://docs.anthropic.com/en/docs/build-with-claude/batch-processing).

// MessagesPath is the Messages API; BatchPath is where a batch is created.
const (
	MessagesPath = "/v1/messages"
	BatchPath    = "/v1/messages/batches"
)

// MaxBatchRequests is the most requests one batch may hold, the API's own
// limit (100,000 requests or 256 MB, whichever comes first).
const MaxBatchRequests = 100_000

// BatchLine is one request of a batch as tokenwarden estimates it.
type BatchLine struct {
	CustomID string
	Request  wire.Request
}

// ErrBatchTooLarge is returned for a batch of more requests than maxLines.
var ErrBatchTooLarge = errors.New("the batch has too many requests to estimate")

// ErrBatchInvalid is returned for a batch body that is not one.
var ErrBatchInvalid = errors.New("invalid batch")

// ParseBatch reads a batch creation body: each line's params parsed as the
// Messages request it is, so each is estimated like one. A batch of more than
// maxLines requests (at most MaxBatchRequests) is refused, never estimated in
// part.
func ParseBatch(body []byte, maxLines int) ([]BatchLine, error) {
	if maxLines <= 0 || maxLines > MaxBatchRequests {
		maxLines = MaxBatchRequests
	}
	var f struct {
		Requests []struct {
			CustomID string          `json:"custom_id"`
			Params   json.RawMessage `json:"params"`
		} `json:"requests"`
	}
	if err := json.Unmarshal(body, &f); err != nil {
		return nil, fmt.Errorf("%w: the batch body is not a JSON object with requests: %v", ErrBatchInvalid, err)
	}
	if len(f.Requests) == 0 {
		return nil, fmt.Errorf("%w: the batch has no requests", ErrBatchInvalid)
	}
	if len(f.Requests) > maxLines {
		return nil, fmt.Errorf("%w: %d requests, more than the %d allowed", ErrBatchTooLarge, len(f.Requests), maxLines)
	}
	out := make([]BatchLine, len(f.Requests))
	for i, r := range f.Requests {
		if len(r.Params) == 0 {
			return nil, fmt.Errorf("%w: batch request %d has no params", ErrBatchInvalid, i)
		}
		req, err := ParseRequest(r.Params)
		if err != nil {
			return nil, fmt.Errorf("batch request %d (%q): %w", i, r.CustomID, err)
		}
		if req.Stream {
			return nil, fmt.Errorf("%w: batch request %d asks to stream, which batches do not", ErrBatchInvalid, i)
		}
		out[i] = BatchLine{CustomID: r.CustomID, Request: req}
	}
	return out, nil
}

// BatchResultsPath reports whether path downloads a batch's results,
// GET /v1/messages/batches/{id}/results
// (https://docs.anthropic.com/en/api/retrieving-message-batch-results), and
// the batch's id.
func BatchResultsPath(path string) (id string, ok bool) {
	id, ok = wire.PathID(path, BatchPath+"/", "/results")
	if !ok || !ValidBatchID(id) {
		return "", false
	}
	return id, true
}

// ValidBatchID reports whether id can be a batch id: "msgbatch_" and
// letters, digits, '_' or '-', at most 128 bytes, so it is safe in a store key.
func ValidBatchID(id string) bool {
	rest, ok := strings.CutPrefix(id, "msgbatch_")
	if !ok || rest == "" || len(id) > 128 {
		return false
	}
	for _, c := range []byte(rest) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// BatchCreated reads the batch id from the answer to a batch creation.
func BatchCreated(body []byte) (id string, ok bool) {
	var b struct {
		ID   string `json:"id"`
		Type string `json:"type"`
	}
	if json.Unmarshal(body, &b) != nil || b.Type != "message_batch" || !ValidBatchID(b.ID) {
		return "", false
	}
	return b.ID, true
}

// BatchResult is one line of a batch's results (JSONL): the request's
// custom_id, its result type (succeeded, errored, canceled, expired) and,
// for a succeeded one, the message's usage and model. Only succeeded
// requests are billed
// (https://docs.anthropic.com/en/docs/build-with-claude/batch-processing).
type BatchResult struct {
	CustomID  string
	Type      string
	Usage     accounting.Usage
	Model     string
	Succeeded bool
}

// ParseBatchResult reads one results line.
func ParseBatchResult(line []byte) (BatchResult, error) {
	var l struct {
		CustomID string `json:"custom_id"`
		Result   struct {
			Type    string          `json:"type"`
			Message json.RawMessage `json:"message"`
		} `json:"result"`
	}
	if err := json.Unmarshal(line, &l); err != nil {
		return BatchResult{}, fmt.Errorf("%w: a results line is not JSON: %v", ErrBatchInvalid, err)
	}
	r := BatchResult{CustomID: l.CustomID, Type: l.Result.Type}
	if r.Type != "succeeded" {
		return r, nil
	}
	u, model, ok := UsageFromJSON(l.Result.Message)
	if !ok {
		return r, fmt.Errorf("%w: succeeded line %q has no usage", ErrBatchInvalid, l.CustomID)
	}
	r.Usage, r.Model, r.Succeeded = u, model, true
	return r, nil
}
